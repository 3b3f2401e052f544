"""The data/model agreement record written next to every ``.bin``/``.idx`` pair.

``tools/preprocess_data.py`` writes ``<dataset prefix>.json`` (e.g. ``data/en_text_document.json``)
with what the token ids mean and how they were made: tokenizer type and vocabulary fingerprint
(``Tokenizer.vocab_fingerprint``), vocabulary size, document / sequence / token counts, the largest
token id, the input files and the flags. The trainer and evaluation check it against their
tokenizer and padded vocabulary (``flm_ext.data.checks.check_data_matches``) so data made with
another tokenizer stops the run instead of training on ids the model reads as something else.
``bin`` (``bin_fingerprint``) ties the record to its ``.bin``: size, token count and a hash of 16
sampled windows (about 1 MiB read, whatever the size), so a ``.bin`` made again next to an old
record is noticed and its ids are scanned instead of trusting the recorded largest id.
Only standard-library imports (and xxhash, read lazily), so the preprocessing tool stays quick to start.
"""
from __future__ import annotations

import json
import os
from typing import Optional

FORMAT = "flm_ext data sidecar 1"


def sidecar_path(dataset_prefix: str) -> str:
    return dataset_prefix + ".json"


_WINDOWS, _WINDOW_BYTES = 16, 1 << 16


def bin_fingerprint(bin_path: str, itemsize: int) -> dict:
    """Size, token count and an xxh3 hash of 16 evenly spaced 64 KiB windows of ``bin_path``
    (all of a small file): cheap at any size, and any re-made ``.bin`` of other ids differs."""
    import xxhash

    size = os.path.getsize(bin_path)
    h = xxhash.xxh3_64()
    with open(bin_path, "rb") as f:
        if size <= _WINDOWS * _WINDOW_BYTES:
            h.update(f.read())
        else:
            for k in range(_WINDOWS):
                f.seek((size - _WINDOW_BYTES) * k // (_WINDOWS - 1))
                h.update(f.read(_WINDOW_BYTES))
    return {"bytes": size, "tokens": size // itemsize, "sampled_xxh3_64": h.hexdigest()}


def make_sidecar(tokenizer, tokenizer_type: str, *, documents: int, sequences: int, tokens: int,
                 max_token_id: int, dtype: str, inputs, flags: dict, kind: str = "token ids",
                 bin_path: Optional[str] = None) -> dict:
    """The record for one output dataset (``kind``: token ids, or a teacher loss mask); with
    ``bin_path``, the fingerprint of the written ``.bin``."""
    import numpy

    return {
        "format": FORMAT,
        "kind": kind,
        "tokenizer": {
            "type": tokenizer_type,
            "vocab_size": tokenizer.vocab_size,
            "vocab_fingerprint": tokenizer.vocab_fingerprint,
            "eod": tokenizer.eod,
            "identifiers": dict(tokenizer.unique_identifiers),
        },
        "documents": documents,
        "sequences": sequences,
        "tokens": tokens,
        "max_token_id": max_token_id,
        "dtype": dtype,
        "inputs": [{"path": p, "bytes": os.path.getsize(p)} for p in inputs],
        "flags": flags,
        "bin": bin_fingerprint(bin_path, numpy.dtype(dtype).itemsize) if bin_path else None,
    }


def read_sidecar(dataset_prefix: str) -> Optional[dict]:
    """The record, or None when there is none (data made by another tool). A file that is not
    our JSON raises ``ValueError`` naming it."""
    path = sidecar_path(dataset_prefix)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); delete it or preprocess the data again") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path}: not a preprocessing record ({FORMAT!r}); delete it or preprocess again")
    return record
