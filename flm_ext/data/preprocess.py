"""jsonl -> megatron-core ``IndexedDataset`` (.bin/.idx), streamed, in parallel, all or nothing.

Flow: the input (one file, a glob of shards, ``.jsonl`` or ``.jsonl.gz``) is cut into *units*
(whole files, or byte ranges of plain files when ``--partitions`` asks for more pieces than
there are files). Units are dealt to partitions in order; each partition (its own process when
there are several) reads its units line by line, sends chunks of lines to a pool of tokenizer
workers (``imap`` keeps the order) and spills ids and lengths to temporary files. At the end
the parts are concatenated in order and the ``.idx`` is written, under temporary names that
are renamed only when everything succeeded. So the output does not depend on ``--workers`` or
``--partitions``, and memory does not depend on the input size.

Bad lines (malformed JSON, invalid UTF-8, a missing key, a non-string value, an empty
document; in teacher mode also a non-boolean label) stop the run with ``file:line: reason``,
unless ``skip_bad_lines``: then they are skipped and counted by reason.

Sentence mode (``split_sentences``, Megatron-LM's ``--split-sentences``): every sentence
(``flm_ext.data.sentences``) is its own sequence and the ``.idx`` document index groups each
document's sentences (megatron-core's GPTDataset, like Megatron-LM's, then shuffles and splits
sentences, not documents: the mode is meant for sentence-level objectives); EOD (with ``append_eod``) ends the last sentence; the output is
``<prefix>_<key>_sentence``. Each document is split as the language ``lang`` forces, or by default
(``auto``) as the one ``sentences.detect_language`` reads off it; ``Stats.languages`` counts them. Each output dataset gets a sidecar ``<dataset>.json``
(``flm_ext.data.sidecar``). An input with no document at all is an error.

Teacher-signal mode (FreeLM) reads ``{"text", "proposition", "label": true|false}`` and writes
two datasets with equal document lengths: ``<prefix>_teacher_document`` holds
``tokenize(text + "\\n" + proposition) + label_ids(label) [+ eod]`` and
``<prefix>_teacher_loss_mask_document`` holds 1 on the label's tokens and 0 elsewhere. The
label is tokenized on its own, so its ids never merge with the proposition's last characters.
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy

from flm_ext.data import special_tokens
from flm_ext.progress import format_duration
from flm_ext.data.indexed_writer import SpillWriter, merge_to_indexed, token_dtype
from flm_ext.data.sidecar import make_sidecar, sidecar_path
from flm_ext.fileio import atomic_write_json
from flm_ext.flags import flag
from flm_ext.data.tokenizers import TOKENIZER_TYPES, build_tokenizer
from flm_ext.data.sentences import LANGS

BAD_LINE_REASONS = (
    "malformed_json",
    "invalid_utf8",
    "missing_key",
    "non_string",
    "empty_document",
    "non_bool_label",
)
TEACHER_KEYS = ("text", "proposition", "label")
TEACHER_STREAM = "teacher"
TEACHER_MASK_STREAM = "teacher_loss_mask"


@dataclasses.dataclass
class PreprocessConfig:
    """What ``tools/preprocess_data.py`` takes (Megatron-LM's flag names), validated once."""

    input: str = flag(required=True, group="input", help="a .jsonl/.jsonl.gz file or a quoted glob of them")
    output_prefix: str = flag(required=True, group="output")
    tokenizer_type: str  # the tokenizer's flags are TokenizerConfig's (the tool adds them)
    json_keys: Tuple[str, ...] = flag(("text",), nargs="+", group="input", help="keys to extract (default: text)")
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    tokenizer_model: Optional[str] = None
    append_eod: bool = flag(False, group="tokenizer", help="end every document with the EOD id")
    workers: int = flag(1, group="runtime", help="tokenizer processes (in all)")
    partitions: int = flag(1, group="runtime", help="input pieces processed side by side")
    teacher_signal: bool = flag(False, group="input",
                                help='lines are {"text", "proposition", "label": true|false}: write FreeLM samples')
    skip_bad_lines: bool = flag(False, group="input", help="skip bad lines and count them by reason instead of "
                                                           "stopping")
    split_sentences: bool = flag(  # one sequence per sentence, documents grouped in the .idx
        False, group="input", help="one sequence per sentence (documents kept as groups in the .idx): Megatron-LM's "
                                   "flag")
    keep_newlines: bool = flag(False, group="input", help="with --split-sentences: keep the whitespace (newlines) "
                                                          "after each sentence")
    lang: str = flag(  # with split_sentences: auto (per document, sentences.detect_language) | en (Punkt) | zh (。！？)
        "auto", choices=LANGS, group="input", cli_default=None,  # None: not given
        help="with --split-sentences: auto (the default: per document, zh when its Han characters are at least a "
             "third as many as its Latin letters, else en), en (nltk Punkt, parameters trained on the King James "
             "Bible), zh (split after 。！？)")
    log_interval: float = flag(5.0, group="runtime", help="seconds between progress lines")
    chunk_lines: int = 256  # lines per task sent to a worker

    def __post_init__(self) -> None:
        self.json_keys = tuple(self.json_keys)
        if self.tokenizer_type not in TOKENIZER_TYPES:
            raise ValueError(f"--tokenizer-type must be one of {TOKENIZER_TYPES}, got {self.tokenizer_type!r}")
        if self.workers < 1 or self.partitions < 1 or self.chunk_lines < 1:
            raise ValueError("--workers, --partitions and chunk_lines must be >= 1")
        if not self.json_keys or len(set(self.json_keys)) != len(self.json_keys):
            raise ValueError(f"--json-keys must be distinct and non-empty, got {self.json_keys}")
        if not self.output_prefix:
            raise ValueError("--output-prefix is required")
        if self.lang not in LANGS:
            raise ValueError(f"--lang must be one of {', '.join(LANGS)}, got {self.lang!r}")
        if self.keep_newlines and not self.split_sentences:
            raise ValueError("--keep-newlines only applies with --split-sentences")
        if self.split_sentences and self.teacher_signal:
            raise ValueError("--split-sentences does not apply to --teacher-signal samples")

    @property
    def streams(self) -> Tuple[str, ...]:
        """Names of the output datasets: ``<prefix>_<stream>_document``."""
        return (TEACHER_STREAM, TEACHER_MASK_STREAM) if self.teacher_signal else self.json_keys

    def output_path(self, stream: str) -> str:
        level = "sentence" if self.split_sentences else "document"  # Megatron-LM's names
        return f"{self.output_prefix}_{stream}_{level}"

    @property
    def flags(self) -> dict:
        """The flags that shape the output, for the sidecar."""
        names = ("json_keys", "append_eod", "teacher_signal", "skip_bad_lines", "split_sentences",
                 "keep_newlines", "lang")
        return {n: (list(v) if isinstance(v, tuple) else v) for n in names for v in [getattr(self, n)]}


class BadInputError(ValueError):
    """A bad input line, reported as ``file:line: reason``."""


class EmptyInputError(BadInputError):
    """An input with no documents (an empty file, or every line skipped)."""


class OutputError(BadInputError):
    """The outputs could not be written (a read-only folder, a full disk, a file-size limit)."""


def output_error_line(e: OSError, output_prefix: str, inputs: Sequence[str] = ()) -> str:
    """One line for an OSError met while writing (or reading one of ``inputs``), with the usual
    causes in words."""
    import errno

    why = {errno.EFBIG: "the file-size limit was reached (ulimit -f)", errno.ENOSPC: "the disk is full",
           errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EROFS: "the file system is read-only"}.get(e.errno)
    if e.filename is not None and e.filename in inputs:
        return f"--input {e.filename}: reading it failed: {why or e.strerror or e}"
    where = e.filename or output_prefix
    return f"--output-prefix {output_prefix}: writing {where} failed: {why or e.strerror or e}"


@dataclasses.dataclass
class Unit:
    """A piece of the input: a whole file, or the lines starting in bytes [start, end)."""

    path: str
    start: int = 0
    end: Optional[int] = None  # None: to the end of the file

    @property
    def size(self) -> int:
        """Bytes of text in the unit (for progress): a gzip file's own record of its size."""
        if self.path.endswith(".gz"):
            with open(self.path, "rb") as f:  # ISIZE: the last member's size mod 2**32
                if os.path.getsize(self.path) < 4:
                    return 0
                f.seek(-4, os.SEEK_END)
                return int.from_bytes(f.read(4), "little")
        total = os.path.getsize(self.path)
        return (total if self.end is None else self.end) - self.start


# ----------------------------------------------------------------------------- input

def expand_inputs(pattern: str) -> List[str]:
    """A file, or a glob (``shards/*.jsonl.gz``); sorted, so the order is reproducible."""
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        raise FileNotFoundError(f"--input {pattern!r}: no such file(s) {missing or ''}")
    for p in paths:
        if _is_empty(p):
            raise EmptyInputError(f"--input {p}: the file is empty (no documents)")
    return paths


def _is_empty(path: str) -> bool:
    if os.path.getsize(path) == 0:
        return True
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read(1) == b""
        except (OSError, EOFError):
            return False  # reported as unreadable when read
    return False


def plan_units(paths: Sequence[str], partitions: int) -> List[List[Unit]]:
    """Deal the input to ``partitions`` contiguous groups of about equal bytes."""
    units: List[Unit] = []
    split = partitions > len(paths)
    for p in paths:
        size = os.path.getsize(p)
        if split and not p.endswith(".gz") and size > 0:
            cuts = [size * i // partitions for i in range(partitions + 1)]
            units += [Unit(p, a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        else:
            units.append(Unit(p))
    total = sum(u.size for u in units) or 1
    groups: List[List[Unit]] = [[] for _ in range(partitions)]
    done = 0
    for u in units:
        groups[min(partitions - 1, done * partitions // total)].append(u)
        done += u.size
    return [g for g in groups if g]


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _iter_unit_lines(unit: Unit) -> Iterator[Tuple[int, bytes]]:
    """(line number within the unit, raw line without newline) for lines starting in range.
    A file that cannot be read on (a truncated or corrupt .gz) is a ``BadInputError``."""
    try:
        yield from _read_unit_lines(unit)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise BadInputError(f"{unit.path}: unreadable ({type(e).__name__}: {e})") from e


def _read_unit_lines(unit: Unit) -> Iterator[Tuple[int, bytes]]:
    with _open_binary(unit.path) as f:
        pos = unit.start
        if pos > 0:
            f.seek(pos - 1)
            if f.read(1) != b"\n":  # the line under the cut belongs to the previous unit
                pos += len(f.readline())
        n = 0
        while unit.end is None or pos < unit.end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            n += 1
            yield n, line.rstrip(b"\n").rstrip(b"\r")


def open_text_lines(path: str) -> Iterator[Tuple[int, bytes]]:
    """(1-based line number, raw bytes) of a jsonl or jsonl.gz file."""
    return _iter_unit_lines(Unit(path))


def _line_offset(unit: Unit) -> int:
    """Lines before the unit's first line (counted only when an error needs it)."""
    if unit.start == 0:
        return 0
    with open(unit.path, "rb") as f:
        count, left = 0, unit.start
        while left > 0:
            block = f.read(min(left, 16 << 20))
            count += block.count(b"\n")
            left -= len(block)
        f.seek(unit.start - 1)
        # A cut inside a line leaves that line to the previous unit.
        return count if f.read(1) == b"\n" else count + 1


# ----------------------------------------------------------------------------- workers

_TOKENIZER = None
_TOKENIZER_SPEC = None
_SPLITTERS: Dict[Tuple[str, bool], object] = {}


def _splitter(lang: str, keep_newlines: bool):
    """The sentence splitter, built once per process."""
    key = (lang, keep_newlines)
    if key not in _SPLITTERS:
        from flm_ext.data.sentences import build_splitter

        _SPLITTERS[key] = build_splitter(lang, keep_newlines)
    return _SPLITTERS[key]


def _init_worker(spec: Tuple) -> None:
    """Build the tokenizer once per process (inherited as is under fork)."""
    global _TOKENIZER, _TOKENIZER_SPEC
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if _TOKENIZER_SPEC != spec:
        _TOKENIZER = build_tokenizer(*spec)
        _TOKENIZER_SPEC = spec


def _parse(raw: bytes, keys: Sequence[str], teacher: bool) -> Tuple[Optional[dict], Optional[str], str]:
    """(record, None, "") or (None, reason, detail)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, "invalid_utf8", str(e)
    try:
        obj = json.loads(text)
    except ValueError as e:
        return None, "malformed_json", str(e)
    if not isinstance(obj, dict):
        return None, "malformed_json", f"a JSON object is needed, got {type(obj).__name__}"
    for key in TEACHER_KEYS if teacher else keys:
        if key not in obj:
            return None, "missing_key", f"no key {key!r}"
        value = obj[key]
        if teacher and key == "label":
            if not isinstance(value, bool):
                return None, "non_bool_label", f"'label' must be true or false, got {value!r}"
        elif not isinstance(value, str):
            return None, "non_string", f"{key!r} is a {type(value).__name__}, not a string"
        elif not value.strip():
            return None, "empty_document", f"{key!r} is empty"
        elif not _is_utf8(value):
            return None, "lone_surrogate", f"{key!r} holds a lone surrogate escape (e.g. \\ud800), not text"
    return obj, None, ""


def _is_utf8(text: str) -> bool:
    """False for a string JSON allowed but no tokenizer takes: a lone surrogate ("\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _sentence_ids(tok, text: str, sentences, eod: List[int]) -> List[List[int]]:
    """Token ids per sentence (sentences of no token dropped, as Megatron-LM does); EOD ends
    the last one."""
    out = [ids for ids in (tok.tokenize(sentence) for sentence in sentences(text)) if ids]
    if out:
        out[-1] = out[-1] + eod
    return out


def _encode_chunk(task: Tuple[int, List[Tuple[int, bytes]], "PreprocessConfig"]):
    """Tokenize a chunk of lines: (unit index, per-stream (ids, lengths, sequences per document),
    bad lines, n_bytes)."""
    unit_index, lines, cfg = task
    keys, teacher, append_eod = cfg.json_keys, cfg.teacher_signal, cfg.append_eod
    tok = _TOKENIZER
    streams = (TEACHER_STREAM, TEACHER_MASK_STREAM) if teacher else keys
    ids: Dict[str, List[int]] = {s: [] for s in streams}
    lengths: Dict[str, List[int]] = {s: [] for s in streams}
    doc_counts: Dict[str, List[int]] = {s: [] for s in streams}
    bad: List[Tuple[int, str, str]] = []
    languages: Counter = Counter()  # with split_sentences: documents split as each language
    n_bytes = 0
    eod = [tok.eod] if append_eod else []
    for line_no, raw in lines:
        n_bytes += len(raw) + 1
        obj, reason, detail = _parse(raw, keys, teacher)
        if obj is None:
            bad.append((line_no, reason, detail))
            continue
        if teacher:
            body = tok.tokenize(obj["text"] + special_tokens.PROPOSITION_SEPARATOR + obj["proposition"])
            label = tok.label_ids(obj["label"])
            doc = body + label + eod
            mask = [0] * len(body) + [1] * len(label) + [0] * len(eod)
            for s, d in ((TEACHER_STREAM, doc), (TEACHER_MASK_STREAM, mask)):
                ids[s] += d
                lengths[s].append(len(d))
                doc_counts[s].append(1)
        else:
            for key in keys:
                if cfg.split_sentences:
                    lang = _language(cfg.lang, obj[key])
                    languages[lang] += 1
                    seqs = _sentence_ids(tok, obj[key], _splitter(lang, cfg.keep_newlines), eod)
                else:
                    seqs = [tok.tokenize(obj[key]) + eod]
                for seq in seqs:
                    ids[key] += seq
                    lengths[key].append(len(seq))
                doc_counts[key].append(len(seqs))
    dtype = token_dtype(tok.vocab_size)
    out = {s: (numpy.array(ids[s], dtype=dtype), numpy.array(lengths[s], dtype=numpy.int32),
               numpy.array(doc_counts[s], dtype=numpy.int32)) for s in streams}
    return unit_index, out, bad, n_bytes, languages


def _language(lang: str, text: str) -> str:
    """The language a document is split as: the forced one, or (auto) the detected one."""
    if lang != "auto":
        return lang
    from flm_ext.data.sentences import detect_language

    return detect_language(text)


# ----------------------------------------------------------------------------- one partition

class Throttle:
    """Back-pressure for ``Pool.imap``: its feeder thread reads the whole input as fast as it
    can, so a slow tokenizer would let unread chunks pile up in memory. ``feed`` lets at most
    ``limit`` chunks be out (sent, result not yet taken with ``done``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.Semaphore(limit)
        self._stopped = False

    def feed(self, items):
        for item in items:
            self._slots.acquire()
            if self._stopped:
                return
            yield item

    def done(self) -> None:
        self._slots.release()

    def stop(self) -> None:
        """Unblock and end the feeder (on error, so the pool can shut down)."""
        self._stopped = True
        for _ in range(self.limit + 1):
            self._slots.release()


@dataclasses.dataclass
class Stats:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    error: Optional[str] = None
    output_failed: bool = False  # the error is OutputError (writing), not a bad input line
    stream_tokens: Counter = dataclasses.field(default_factory=Counter)  # per output dataset
    max_id: Dict[str, int] = dataclasses.field(default_factory=dict)  # largest id per output dataset
    languages: Counter = dataclasses.field(default_factory=Counter)  # documents split as each language

    def add(self, other: "Stats") -> None:
        self.documents += other.documents
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.skipped.update(other.skipped)
        if other.error and not self.error:
            self.error, self.output_failed = other.error, other.output_failed
        self.stream_tokens.update(other.stream_tokens)
        for s, m in other.max_id.items():
            self.max_id[s] = max(m, self.max_id.get(s, -1))
        self.languages.update(other.languages)

    def add_chunk(self, out: Dict[str, Tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]], first: str,
                  token_streams: Sequence[str]) -> None:
        self.documents += len(out[first][2])
        for s, (ids, _, _) in out.items():
            self.stream_tokens[s] += len(ids)
            if len(ids):
                self.max_id[s] = max(int(ids.max()), self.max_id.get(s, -1))
        self.tokens += sum(len(out[s][0]) for s in token_streams)


def _chunks(units: Sequence[Unit], cfg: PreprocessConfig) -> Iterator[Tuple[int, List[Tuple[int, bytes]], PreprocessConfig]]:
    for ui, unit in enumerate(units):
        batch: List[Tuple[int, bytes]] = []
        for line in _iter_unit_lines(unit):
            batch.append(line)
            if len(batch) == cfg.chunk_lines:
                yield ui, batch, cfg
                batch = []
        if batch:
            yield ui, batch, cfg


def _progress(tag: str, stats: Stats, t0: float, done: int, total: int) -> str:
    dt = max(time.time() - t0, 1e-9)
    mbs = stats.bytes / dt / 1e6
    eta = (total - done) / (done / dt) if done else float("inf")
    return (
        f"{tag}{stats.documents:,} docs, {stats.bytes / 1e6:,.1f} MB, {stats.tokens:,} tokens, "
        f"{mbs:.2f} MB/s, {stats.tokens / dt:,.0f} tokens/s, {100 * done / max(total, 1):.0f}%"
        f", ETA {format_duration(eta)}"
    )


def run_partition(cfg: PreprocessConfig, units: Sequence[Unit], part_prefix: str, workers: int, tag: str = "") -> Stats:
    """Process ``units`` in order into spilled parts ``<part_prefix>.<stream>.{bin,len}``."""
    spec = (cfg.tokenizer_type, cfg.vocab_file, cfg.merge_file, cfg.tokenizer_model)
    _init_worker(spec)
    dtype = token_dtype(_TOKENIZER.vocab_size)
    writers = {s: SpillWriter(f"{part_prefix}.{s}", dtype, documents=cfg.split_sentences) for s in cfg.streams}
    stats = Stats()
    total = sum(u.size for u in units)
    t0 = last = time.time()
    pool = multiprocessing.Pool(workers, _init_worker, (spec,)) if workers > 1 else None
    throttle = Throttle(4 * workers)
    completed = False
    try:
        tasks = _chunks(units, cfg)
        if pool:
            results = pool.imap(_encode_chunk, throttle.feed(tasks), chunksize=1)
        else:
            results = map(_encode_chunk, tasks)
        token_streams = [s for s in cfg.streams if s != TEACHER_MASK_STREAM]
        for unit_index, out, bad, n_bytes, languages in results:
            throttle.done()
            if bad and not cfg.skip_bad_lines:
                stats.error = _locate(units[unit_index], bad[0])
                break
            stats.bytes += n_bytes
            for s, (ids, lengths, doc_counts) in out.items():
                writers[s].add(ids, lengths, doc_counts)
            stats.add_chunk(out, cfg.streams[0], token_streams)
            stats.languages.update(languages)
            if bad:
                stats.skipped.update(reason for _, reason, _ in bad)
            now = time.time()
            if now - last >= cfg.log_interval:
                last = now
                print(_progress(tag, stats, t0, min(stats.bytes, total), total), file=sys.stderr, flush=True)
        completed = stats.error is None
    finally:
        throttle.stop()
        if pool is not None:
            pool.close() if completed else pool.terminate()
            pool.join()
        for w in writers.values():
            w.close()
    return stats


def _locate(unit: Unit, bad: Tuple[int, str, str]) -> str:
    """``file:line: reason: detail`` for a bad line of ``unit``."""
    line_no, reason, detail = bad
    return f"{unit.path}:{_line_offset(unit) + line_no}: {reason}: {detail}"


def _partition_main(cfg, units, part_prefix, workers, tag, conn) -> None:
    try:
        stats = run_partition(cfg, units, part_prefix, workers, tag)
    except BadInputError as e:
        stats = Stats(error=str(e))
    except OSError as e:
        stats = Stats(error=output_error_line(e, cfg.output_prefix, [u.path for u in units]), output_failed=True)
    except BaseException:  # report to the parent, which cleans up
        stats = Stats(error=traceback.format_exc())
    conn.send(stats)
    conn.close()


# ----------------------------------------------------------------------------- the whole run

def output_notes(cfg: PreprocessConfig) -> List[str]:
    """What a run will do to the file system beyond writing its outputs (one line each)."""
    out_dir = os.path.dirname(os.path.abspath(cfg.output_prefix))
    if not os.path.isdir(out_dir):
        return [f"--output-prefix {cfg.output_prefix}: creating the folder {out_dir}"]
    existing = [cfg.output_path(s) for s in cfg.streams if os.path.exists(cfg.output_path(s) + ".bin")
                or os.path.exists(cfg.output_path(s) + ".idx")]
    if not existing:
        return []
    return [f"--output-prefix {cfg.output_prefix}: overwriting the existing "
            + ", ".join(f"{p}.bin/.idx" for p in existing)]


def _make_dirs(out_dir: str) -> List[str]:
    """Create ``out_dir``; returns the folders created, deepest first (removed again on failure)."""
    created, d = [], out_dir
    while d and not os.path.isdir(d):
        created.append(d)
        d = os.path.dirname(d)
    os.makedirs(out_dir, exist_ok=True)
    return created


def _remove_empty(folders: Sequence[str]) -> None:
    for d in folders:
        try:
            os.rmdir(d)
        except OSError:
            return


def preprocess(cfg: PreprocessConfig) -> Stats:
    """Run the whole conversion; on error nothing is left behind (a folder it created included)
    and ``BadInputError`` raises. Writes ``<dataset>.bin/.idx`` and the ``<dataset>.json`` sidecar."""
    paths = expand_inputs(cfg.input)
    groups = plan_units(paths, cfg.partitions)
    _init_worker((cfg.tokenizer_type, cfg.vocab_file, cfg.merge_file, cfg.tokenizer_model))
    dtype = token_dtype(_TOKENIZER.vocab_size)
    try:
        return _preprocess(cfg, paths, groups, dtype)
    except OSError as e:  # writing (or reading an input that went away)
        raise OutputError(output_error_line(e, cfg.output_prefix, paths)) from None


def _preprocess(cfg: PreprocessConfig, paths, groups, dtype) -> Stats:
    created = _make_dirs(os.path.dirname(os.path.abspath(cfg.output_prefix)))
    tmp = f"{cfg.output_prefix}.tmp{os.getpid()}"
    part_prefixes = [f"{tmp}.part{i}" for i in range(len(groups))]
    finals = {s: cfg.output_path(s) for s in cfg.streams}
    produced: List[str] = []
    stats = Stats()
    done = False
    try:
        if len(groups) == 1:
            stats.add(run_partition(cfg, groups[0], part_prefixes[0], cfg.workers))
        else:
            stats = _run_partitions(cfg, groups, part_prefixes)
        if stats.error:
            raise (OutputError if stats.output_failed else BadInputError)(stats.error)
        if stats.documents == 0:
            skipped = sum(stats.skipped.values())
            raise EmptyInputError(f"--input {cfg.input}: no documents" + (f" ({skipped} bad lines skipped)" if skipped else ""))
        for s in finals:
            produced += [f"{tmp}.{s}.bin", f"{tmp}.{s}.idx", f"{tmp}.{s}.json"]
            n_seq, n_doc = merge_to_indexed([f"{p}.{s}" for p in part_prefixes], dtype, f"{tmp}.{s}.bin",
                                            f"{tmp}.{s}.idx", documents=cfg.split_sentences)
            kind = "teacher loss mask" if s == TEACHER_MASK_STREAM else "token ids"
            atomic_write_json(f"{tmp}.{s}.json", make_sidecar(
                _TOKENIZER, cfg.tokenizer_type, documents=n_doc, sequences=n_seq, tokens=stats.stream_tokens[s],
                max_token_id=stats.max_id.get(s, -1), dtype=numpy.dtype(dtype).name, inputs=paths,
                flags=cfg.flags, kind=kind, bin_path=f"{tmp}.{s}.bin"))
        for s, final in finals.items():
            os.replace(f"{tmp}.{s}.bin", final + ".bin")
            os.replace(f"{tmp}.{s}.idx", final + ".idx")
            os.replace(f"{tmp}.{s}.json", sidecar_path(final))
        produced = []
        done = True
    finally:
        leftovers = produced + [f"{p}.{s}.{ext}" for p in part_prefixes for s in cfg.streams
                                for ext in ("bin", "len", "doc")]
        for path in leftovers:
            if os.path.exists(path):
                os.remove(path)
        if not done:
            _remove_empty(created)
    return stats


def _run_partitions(cfg: PreprocessConfig, groups, part_prefixes) -> Stats:
    """One process per partition, each with its share of the workers (as Megatron-LM does)."""
    ctx = multiprocessing.get_context("fork")
    per = max(1, cfg.workers // len(groups))
    procs = []
    for i, (units, prefix) in enumerate(zip(groups, part_prefixes)):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_partition_main, args=(cfg, units, prefix, per, f"[partition {i}] ", child))
        p.start()
        child.close()
        procs.append((p, parent))
    stats = Stats()
    for p, conn in procs:
        try:
            stats.add(conn.recv())
        except EOFError:
            stats.error = stats.error or f"partition process {p.pid} died (exit code {p.exitcode})"
        p.join()
    return stats
