"""FLM's data layer: offline tokenizers, jsonl -> megatron .bin/.idx, the demo corpus, and the
training datasets (language blend + FreeLM teacher signal).

Modules (imported on demand, so the preprocessing tool starts without torch):
- ``special_tokens``: the end-of-document token and the two label emoji, named once.
- ``tokenizers``: ``build_tokenizer(tokenizer_type, vocab_file, merge_file, tokenizer_model)``.
- ``train_bpe``: a small byte-level BPE for the tiny models.
- ``preprocess`` / ``indexed_writer``: the streaming conversion behind tools/preprocess_data.py.
- ``demo_corpus``: the bilingual demo corpus from installed packages.
- ``datasets``: ``DataConfig`` and ``build_pretraining_datasets`` for the trainer.
"""
