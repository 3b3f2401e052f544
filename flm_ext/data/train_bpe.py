"""Train a small byte-level BPE (HF ``tokenizers``) on jsonl corpora, for the tiny models.

Byte-level means every string, emoji labels included, has a tokenization; the end-of-document
token is ``special_tokens.EOD_TOKEN``. Load the result with ``--tokenizer-type
HuggingFaceTokenizer --tokenizer-model <output>``.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Iterator, Sequence

from flm_ext.data import special_tokens
from flm_ext.fileio import atomic_write
from flm_ext.data.preprocess import open_text_lines


def iter_texts(inputs: Sequence[str], json_key: str = "text") -> Iterator[str]:
    """The ``json_key`` string of every line of every file (jsonl or jsonl.gz), streamed."""
    for path in inputs:
        for line_no, raw in open_text_lines(path):
            try:
                value = json.loads(raw)[json_key]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: no string {json_key!r} ({e})") from e
            if not isinstance(value, str):
                raise ValueError(f"{path}:{line_no}: {json_key!r} is not a string")
            yield value


def train_bpe(
    inputs: Sequence[str], output: str, vocab_size: int = 8192, min_frequency: int = 2,
    json_key: str = "text",
) -> str:
    """Train and write ``output`` (a tokenizer.json); returns its path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size must exceed the 256 byte tokens, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[special_tokens.EOD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stdout.isatty(),  # its bar is redrawn in place; in a log it is blank lines
    )
    tok.train_from_iterator(iter_texts(inputs, json_key), trainer=trainer)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    atomic_write(output, tok.to_str(pretty=True))  # as Tokenizer.save writes it, with umask permissions
    return output
