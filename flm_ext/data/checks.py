"""Checks that stop a run on bad training data with one line instead of a traceback, a hang or
silently wrong training.

- ``check_indexed``: a ``.bin``/``.idx`` pair exists and is whole (the ``.idx`` header's counts
  match its size, the ``.bin`` is as long as the ``.idx`` says). megatron-core would otherwise
  fail deep inside numpy, or read past the end.
- ``check_data_matches``: the data was tokenized by the training tokenizer (the sidecar's
  vocabulary fingerprint) and every id fits the model's padded vocabulary (the sidecar's largest
  id while its ``.bin`` fingerprint matches, else a scan of every id). Without this, data
  made with cl100k_base trains a 4,096-token model silently: at TP=2 megatron's vocab-parallel
  embedding reads ids outside every rank's shard as zero vectors.
- ``split_counts`` / ``check_splits``: megatron-core's ``GPTDataset`` counts epochs with
  ``while tokens < tokens_requested: tokens += tokens_per_epoch``; a split that gets no
  document (``--split 98,2,0`` on 20 documents, the default ``969,30,1`` test share below ~500
  documents) has 0 tokens per epoch and loops forever, even for 0 samples (it asks for one
  extra token). Splits asked for no samples are not built at all (``datasets._gpt_config``);
  a split asked for samples that has no document stops here, naming the split and the counts.
- ``data_identity``: what megatron's index cache key lacks (it is keyed by the configuration,
  not the data): sizes and sampled content of the files and the sidecar, so a prefix
  preprocessed again in place gets fresh indices. Content, not mtimes, so copies of the same
  data on several nodes share one cache.
"""
from __future__ import annotations

import os
import struct
from typing import List, Optional, Sequence, Tuple

import numpy

from flm_ext.config import ConfigError
from flm_ext.data.sidecar import read_sidecar, sidecar_path

_HEADER = b"MMIDIDX\x00\x00"
_HEADER_SIZE = len(_HEADER) + 8 + 1 + 8 + 8
_DTYPES = {1: numpy.uint8, 2: numpy.int8, 3: numpy.int16, 4: numpy.int32, 5: numpy.int64, 6: numpy.float64,
           7: numpy.float32, 8: numpy.uint16}  # megatron-core's indexed_dataset.DType codes
SPLIT_NAMES = ("train", "valid", "test")
_SAMPLE_WINDOWS, _WINDOW = 16, 1 << 16  # data_identity samples 16 windows of 64 Ki bytes


class DataError(ConfigError):
    """Training data that cannot be used as given; the message names the flag or file and what to do."""


class IndexInfo:
    """The header of a ``.idx`` file: token dtype, sequence and document counts."""

    def __init__(self, prefix: str, dtype, sequences: int, documents: int):
        self.prefix, self.dtype, self.sequences, self.documents = prefix, numpy.dtype(dtype), sequences, documents

    def lengths(self) -> numpy.ndarray:
        """Sequence lengths (a memory map of the .idx)."""
        return numpy.memmap(self.prefix + ".idx", dtype=numpy.int32, mode="r", offset=_HEADER_SIZE,
                            shape=(self.sequences,))


def _missing_hint(prefix: str) -> str:
    for suffix in ("_text_document", "_text_sentence", "_teacher_document"):
        if os.path.isfile(prefix + suffix + ".idx"):
            return f" (did you mean {prefix + suffix}?)"
    return " (give the dataset prefix that tools/preprocess_data.py printed, e.g. data/en_text_document)"


def check_indexed(prefix: str, flag: str) -> IndexInfo:
    """The pair exists and is whole; returns its header. ``flag`` names where the prefix came from."""
    missing = [prefix + ext for ext in (".idx", ".bin") if not os.path.isfile(prefix + ext)]
    if missing:
        raise DataError(f"{flag} {prefix}: no {' and no '.join(missing)}{_missing_hint(prefix)}")
    idx, size = prefix + ".idx", os.path.getsize(prefix + ".idx")
    redo = "; preprocess the data again (tools/preprocess_data.py)"
    with open(idx, "rb") as f:
        head = f.read(_HEADER_SIZE)
        if len(head) < _HEADER_SIZE or head[:len(_HEADER)] != _HEADER:
            raise DataError(f"{flag} {prefix}: {idx} is not a megatron index file or is truncated ({size} bytes){redo}")
        code = head[len(_HEADER) + 8]
        sequences, documents = struct.unpack("<QQ", head[len(_HEADER) + 9:])
        if code not in _DTYPES:
            raise DataError(f"{flag} {prefix}: {idx} has an unknown token dtype code {code}{redo}")
        expected = _HEADER_SIZE + 12 * sequences + 8 * documents
        if size != expected:
            raise DataError(f"{flag} {prefix}: {idx} is truncated or corrupt ({size} bytes; its header of "
                            f"{sequences} sequences and {documents - 1} documents needs {expected}){redo}")
        info = IndexInfo(prefix, _DTYPES[code], sequences, documents - 1)
        need = 0
        if sequences:
            f.seek(_HEADER_SIZE + 4 * (sequences - 1))
            (last_len,) = struct.unpack("<i", f.read(4))
            f.seek(_HEADER_SIZE + 4 * sequences + 8 * (sequences - 1))
            (last_ptr,) = struct.unpack("<q", f.read(8))
            need = last_ptr + last_len * info.dtype.itemsize
    have = os.path.getsize(prefix + ".bin")
    if have != need:
        raise DataError(f"{flag} {prefix}: {prefix}.bin is {'truncated' if have < need else 'longer than its .idx says'} "
                        f"({have} bytes; the .idx needs {need}){redo}")
    return info


def data_identity(prefix: str) -> str:
    """A short hash of the dataset's sizes, sampled content and sidecar (for the index cache key)."""
    import xxhash

    h = xxhash.xxh3_64()
    for path in (prefix + ".idx", prefix + ".bin", sidecar_path(prefix)):
        if not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        h.update(f"{os.path.basename(path)}:{size};".encode())
        with open(path, "rb") as f:
            for k in range(_SAMPLE_WINDOWS):
                f.seek(max(0, size - _WINDOW) * k // (_SAMPLE_WINDOWS - 1))
                h.update(f.read(_WINDOW))
    return h.hexdigest()


_SCAN_CHUNK = 1 << 26  # ids per numpy reduction of the full scan (128-256 MiB of a .bin)
_SCAN_PROGRESS_BYTES = 1 << 28  # progress lines only for a .bin at least this large


def scan_ids(info: IndexInfo, emit=None) -> Tuple[int, int]:
    """(smallest, largest) id of the whole ``.bin``: numpy reductions over memory-mapped chunks,
    with progress lines (to ``emit``, default stderr) for a large file. (0, -1) when empty."""
    from flm_ext.progress import Progress

    tokens = numpy.memmap(info.prefix + ".bin", dtype=info.dtype, mode="r")
    if len(tokens) == 0:
        return 0, -1
    nbytes = len(tokens) * info.dtype.itemsize
    progress = None
    if nbytes >= _SCAN_PROGRESS_BYTES:
        progress = Progress(nbytes, f"checking the ids of {info.prefix}.bin", unit="B",
                            **({"emit": emit} if emit else {}))
    low, high = None, None
    for start in range(0, len(tokens), _SCAN_CHUNK):
        chunk = tokens[start:start + _SCAN_CHUNK]
        lo, hi = int(chunk.min()), int(chunk.max())
        low, high = lo if low is None else min(low, lo), hi if high is None else max(high, hi)
        if progress is not None:
            progress.update(len(chunk) * info.dtype.itemsize)
    return low, high


def _bin_described(record: dict, info: IndexInfo) -> Optional[bool]:
    """Whether the sidecar's fingerprint matches the ``.bin`` (None: a record older than fingerprints)."""
    from flm_ext.data.sidecar import bin_fingerprint

    recorded = record.get("bin")
    if not recorded:
        return None
    return recorded == bin_fingerprint(info.prefix + ".bin", info.dtype.itemsize)


def check_data_matches(prefix: str, tokenizer, padded_vocab_size: int, flag: str = "--data-path") -> List[str]:
    """Raise ``DataError`` if ``prefix`` was made with another tokenizer or holds ids the model's
    (padded) vocabulary lacks; returns warnings (data whose tokenizer cannot be verified).

    The sidecar's largest id is trusted only while its fingerprint matches the ``.bin`` (size,
    token count, sampled hash: milliseconds at any size). A missing sidecar, an older one without
    a fingerprint, or one written for another ``.bin`` (the data made again next to it) makes
    every id be scanned: at TP>1 megatron's vocab-parallel embedding reads an id outside every
    rank's shard as a zero vector and trains on silently; at TP=1 it is an IndexError mid-run."""
    info = check_indexed(prefix, flag)
    try:
        record = read_sidecar(prefix)
    except ValueError as e:
        raise DataError(f"{flag} {prefix}: {e}") from e
    redo = ("preprocess it again with the training tokenizer, or train with the tokenizer it was made with "
            "(--tokenizer-type / --tokenizer-model)")
    described = _bin_described(record, info) if record is not None else False
    notes = []
    if described is not False:  # the record is about this .bin (or cannot say otherwise): its tokenizer counts
        made = record["tokenizer"]
        if made["vocab_fingerprint"] != tokenizer.vocab_fingerprint:
            raise DataError(f"{flag} {prefix}: tokenized with {made['type']} ({made['vocab_size']} tokens, vocabulary "
                            f"{made['vocab_fingerprint'][:12]}), but training uses {tokenizer.name} "
                            f"({tokenizer.vocab_size} tokens, vocabulary {tokenizer.vocab_fingerprint[:12]}); {redo}")
        if (record["sequences"], record["documents"]) != (info.sequences, info.documents):
            raise DataError(f"{flag} {prefix}: {sidecar_path(prefix)} describes {record['documents']} documents, the "
                            f".idx holds {info.documents}: the files come from different runs; preprocess again")
    if described:
        if record["max_token_id"] >= padded_vocab_size:
            raise DataError(f"{flag} {prefix}: holds token id {record['max_token_id']}, outside the model's vocabulary "
                            f"of {padded_vocab_size} (--vocab-size too small?)")
        return notes
    why = {None: f"{sidecar_path(prefix)} predates .bin fingerprints",
           False: (f"{sidecar_path(prefix)} was written for another .bin (made again next to it?)" if record
                   else f"no {sidecar_path(prefix)} (made by another tool?)")}[described]
    low, high = scan_ids(info)
    if high >= padded_vocab_size or low < 0:
        bad = high if high >= padded_vocab_size else low
        raise DataError(f"{flag} {prefix}: holds token id {bad}, outside the model's vocabulary of "
                        f"{padded_vocab_size} ({tokenizer.name}, {tokenizer.vocab_size} tokens; {why}, so every id "
                        f"was checked): made with another tokenizer? {redo}")
    count = os.path.getsize(prefix + ".bin") // info.dtype.itemsize
    if described is False:
        notes.append(f"{prefix}: {why}: the tokenizer cannot be verified; all {count:,} "
                     f"ids were checked, the largest is {high} (vocabulary {padded_vocab_size})")
    elif count > _SCAN_CHUNK:  # an older sidecar: say how to skip this scan next time
        notes.append(f"{prefix}: {why}: all {count:,} ids were checked (the largest is {high}); preprocess it "
                     f"again to record the fingerprint and skip this scan")
    return notes


def split_counts(info: IndexInfo, split: str) -> List[Tuple[int, int]]:
    """(sequences, tokens) of each of train/valid/test, cut exactly as megatron-core's builder cuts
    (GPT datasets split by sequence; bounds ``round(share x count)``)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    lengths = info.lengths()
    out = []
    for bounds in matrix:
        if bounds is None:
            out.append((0, 0))
            continue
        beg, end = (int(round(b * float(info.sequences))) for b in bounds)
        out.append((end - beg, int(lengths[beg:end].sum(dtype=numpy.int64))))
    return out


def check_splits(prefixes: Sequence[Tuple[str, str]], split: str, samples: Sequence[int]) -> None:
    """Every split asked for samples must give each dataset at least one non-empty sequence.
    ``prefixes``: (flag, prefix) pairs; ``samples``: samples asked per split."""
    for flag, prefix in prefixes:
        info = check_indexed(prefix, flag)
        for name, (count, tokens), asked in zip(SPLIT_NAMES, split_counts(info, split), samples):
            if asked and tokens == 0:
                unit = "documents" if info.sequences == info.documents else "sequences (sentences)"
                what = f"{count} of its {info.sequences} {unit}" + (" (all empty)" if count else "")
                raise DataError(f"--split {split}: the {name} split of {prefix} ({flag}) gets {what}, but "
                                f"{asked} {name} samples are asked; give the {name} split a larger share or use "
                                f"more data (megatron would loop forever on an empty split)")


def epochs_note(prefix: str, split: str, samples: int, seq_length: int) -> Optional[str]:
    """One line when the train split of ``prefix`` is read more than once for ``samples`` samples
    (megatron repeats it, reshuffled, as often as needed), else None."""
    count, tokens = split_counts(check_indexed(prefix, "--data-path"), split)[0]
    needed = samples * seq_length + 1
    if not samples or not tokens or needed <= tokens:
        return None
    return (f"the train split of {prefix} ({count} documents, {tokens:,} tokens) is read {-(-needed // tokens)} "
            f"times for the {samples:,} samples of {seq_length} tokens asked")
