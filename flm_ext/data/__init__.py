"""FLM's data layer: offline tokenizers, jsonl -> megatron .bin/.idx, the demo corpus, and the
training datasets (language blend + FreeLM teacher signal).

Modules (imported on demand, so the preprocessing tool starts without torch):
- ``special_tokens``: the end-of-document token and the two label emoji, named once.
- ``tokenizers``: ``build_tokenizer(tokenizer_type, vocab_file, merge_file, tokenizer_model)``.
- ``train_bpe``: a small byte-level BPE for the tiny models.
- ``preprocess`` / ``indexed_writer``: the streaming conversion behind tools/preprocess_data.py;
  ``sentences``: ``--split-sentences`` (nltk Punkt, Chinese punctuation); ``sidecar``: the
  ``<dataset>.json`` record of tokenizer, counts and flags written next to each ``.bin/.idx``.
- ``demo_corpus``: the bilingual demo corpus from installed packages.
- ``config``: ``DataConfig``, the data and tokenizer flags, validated once; ``checks``: whole
  files, data/tokenizer agreement, splits with data, the data files' identity for the cache key.
- ``datasets``: ``check_training_data`` and ``build_pretraining_datasets`` for the trainer.
"""
