"""Write megatron-core's ``IndexedDataset`` files (.bin + .idx) with bounded memory.

The layout is megatron-core's (read back by ``megatron.core.datasets.indexed_dataset
.IndexedDataset``): ``.bin`` is the token ids back to back; ``.idx`` is the header
``MMIDIDX\\0\\0``, version 1, the dtype code, the sequence and document counts, then the int32
sequence lengths, the int64 byte pointers and the int64 document indices (the first sequence of
each document, and the count at the end: ``0..n`` with one sequence per document; with
``--split-sentences`` a document is a run of sentences). megatron-core's own builder keeps every length in a Python list;
this writer spills lengths to a side file instead and streams the index out at the end, so a
corpus of any size needs the same memory.
"""
from __future__ import annotations

import os
import shutil
import struct
from typing import Iterable, Optional, Sequence, Tuple

import numpy

_HEADER = b"MMIDIDX\x00\x00"
_CHUNK = 1 << 20  # lengths per step when streaming the index


# megatron-core's dtype codes (``indexed_dataset.DType``) for the two token dtypes it picks;
# kept here so the tool does not import megatron (seconds of start-up) just for two numbers.
_DTYPE_CODES = {numpy.dtype(numpy.uint16): 8, numpy.dtype(numpy.int32): 4}


def token_dtype(vocab_size: int) -> type:
    """megatron-core's choice (``DType.optimal_dtype``): uint16 below 65500 ids, else int32."""
    return numpy.uint16 if vocab_size < 65500 else numpy.int32


class SpillWriter:
    """Appends sequences to ``<path>.bin``, their lengths (int32) to ``<path>.len`` and, when
    documents hold several sequences (sentences), each document's sequence count to ``<path>.doc``."""

    def __init__(self, path: str, dtype: type, documents: bool = False) -> None:
        self.path = path
        self.dtype = numpy.dtype(dtype)
        self._bin = open(path + ".bin", "wb")
        self._len = open(path + ".len", "wb")
        self._doc = open(path + ".doc", "wb") if documents else None

    def add(self, ids: numpy.ndarray, lengths: numpy.ndarray, doc_counts: Optional[numpy.ndarray] = None) -> None:
        """Append sequences given as their concatenated ids and per-sequence lengths (and, with
        ``documents``, how many of them each document holds)."""
        self._bin.write(numpy.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        self._len.write(numpy.ascontiguousarray(lengths, dtype=numpy.int32).tobytes())
        if self._doc is not None:
            self._doc.write(numpy.ascontiguousarray(doc_counts, dtype=numpy.int32).tobytes())

    def close(self) -> None:
        self._bin.close()
        self._len.close()
        if self._doc is not None:
            self._doc.close()

    def remove(self) -> None:
        self.close()
        for suffix in (".bin", ".len", ".doc"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)


def _iter_lengths(len_paths: Sequence[str]) -> Iterable[numpy.ndarray]:
    """int32 blocks of a list of files, in order (sequence lengths or per-document counts)."""
    for p in len_paths:
        with open(p, "rb") as f:
            while True:
                block = f.read(_CHUNK * 4)
                if not block:
                    break
                yield numpy.frombuffer(block, dtype=numpy.int32)


def merge_to_indexed(parts: Sequence[str], dtype: type, bin_path: str, idx_path: str,
                     documents: bool = False) -> Tuple[int, int]:
    """Concatenate spilled parts (in order) into one ``.bin`` + ``.idx``; returns (#sequences,
    #documents). With ``documents`` the parts' ``.doc`` counts give the document index; without,
    every sequence is a document.

    The parts' ``.bin``/``.len``/``.doc`` files are consumed (moved or deleted).
    """
    if len(parts) == 1:
        os.replace(parts[0] + ".bin", bin_path)
    else:
        with open(bin_path, "wb") as out:
            for p in parts:
                with open(p + ".bin", "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
                os.remove(p + ".bin")
    len_paths = [p + ".len" for p in parts]
    count = sum(os.path.getsize(p) // 4 for p in len_paths)
    doc_paths = [p + ".doc" for p in parts] if documents else []
    n_docs = sum(os.path.getsize(p) // 4 for p in doc_paths) if documents else count
    itemsize = numpy.dtype(dtype).itemsize
    with open(idx_path, "wb") as idx:
        idx.write(_HEADER)
        idx.write(struct.pack("<Q", 1))
        idx.write(struct.pack("<B", _DTYPE_CODES[numpy.dtype(dtype)]))
        idx.write(struct.pack("<Q", count))
        idx.write(struct.pack("<Q", n_docs + 1))
        for lengths in _iter_lengths(len_paths):
            idx.write(lengths.tobytes())
        start = 0
        for lengths in _iter_lengths(len_paths):
            ends = numpy.cumsum(lengths, dtype=numpy.int64) * itemsize + start
            idx.write((ends - lengths.astype(numpy.int64) * itemsize).tobytes())
            start = int(ends[-1]) if len(ends) else start
        if documents:
            idx.write(numpy.zeros(1, dtype=numpy.int64).tobytes())
            first = 0
            for counts in _iter_lengths(doc_paths):
                ends = numpy.cumsum(counts, dtype=numpy.int64) + first
                idx.write(ends.tobytes())
                first = int(ends[-1]) if len(ends) else first
        else:
            for first in range(0, count + 1, _CHUNK):
                idx.write(numpy.arange(first, min(first + _CHUNK, count + 1), dtype=numpy.int64).tobytes())
    for p in len_paths + doc_paths:
        os.remove(p)
    return count, n_docs
