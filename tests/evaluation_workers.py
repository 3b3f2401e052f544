"""Helpers for the evaluation tests: a small BPE and a tiny random checkpoint saved at TP=2 or
PP=2 by two real gloo processes (importable by spawned workers)."""
from __future__ import annotations

import json
import os

from flm_ext.config import FLMConfig, ParallelConfig

# Tiny, with a large init so that log-probabilities are far from uniform (a sharper comparison).
CONFIG = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=256, init_method_std=0.1)


def train_tokenizer(out_dir: str) -> str:
    """A 600-token byte-level BPE trained on IQ prompts (English and Chinese)."""
    from flm_ext.data.train_bpe import train_bpe
    from flm_ext.evaluation.iq import suite

    corpus = os.path.join(out_dir, "bpe_corpus.jsonl")
    with open(corpus, "w", encoding="utf-8") as f:
        for test in suite.SUBTESTS:
            if test.kind != "symbolic_sentiment":
                for doc in suite.generate(test, seed=99, n=20):
                    f.write(json.dumps({"text": doc["prompt"]}, ensure_ascii=False) + "\n")
    return train_bpe([corpus], os.path.join(out_dir, "bpe.json"), vocab_size=600)


def save_checkpoint_worker(rank: int, world_size: int, out_dir: str, tp: int, pp: int, vocab: int) -> None:
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.runtime import initialize_distributed
    from flm_ext.checkpoint.training_io import save_checkpoint, trainer_record

    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    initialize_distributed(parallel, seed=1234)
    config = FLMConfig(vocab_size=vocab, **CONFIG)
    chunks = build_model_chunks(config, parallel)
    save_checkpoint(os.path.join(out_dir, "ckpt"), 1, chunks, None, None, record=trainer_record(1, config, 0))
