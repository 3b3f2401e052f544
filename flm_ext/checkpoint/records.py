"""torch.save's exact bytes for one tensor, written straight from the tensor's memory.

torch.distributed.checkpoint stores each tensor item of a `.distcp` file as a `torch.save` blob: a
zip archive (no compression) of the pickled tensor record, four small records, the tensor's bytes
at a 64-byte aligned offset, and a central directory. torch.save builds it through its C++ zip
writer, which copies the data in small pieces and computes each record's CRC32 with miniz's
byte-wise loop: most of an offline tool's CPU time goes there. `tensor_blob` produces the same
bytes as three parts - the archive up to the data, the tensor's own buffer (no copy), the rest -
so a writer appends them as they are and the CRC32 runs at memory speed (ISA-L's when the
`isal` package is installed, zlib's otherwise; both release the GIL).

What makes the bytes equal: the records and the pickle come from torch's own `_save` (run against a
recording stand-in for the zip writer, so the tensor record is whatever this torch version
pickles); the container reproduces torch's writer (flags 0x0808 with data descriptors, the "FB"
extra field padding each record's data to 64 bytes, zip64 end records, the serialization id = the
hash of the record names and the combined CRCs). `supported()` checks once per process, on a small
tensor, that this reproduces torch.save byte for byte; if it does not (another torch version, a
changed `torch.serialization.config`), callers use torch.save. Archives of 4 GiB or more (zip64
record fields) and empty tensors (no data descriptor) also go to torch.save.
"""
from __future__ import annotations

import io
import pickle
import struct
import sys
import zipfile

import torch
import torch.serialization as serialization

try:
    from isal.isal_zlib import crc32
except ImportError:  # optional: zlib's CRC32 gives the same value, ~3x slower
    from zlib import crc32

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_DESCRIPTOR = struct.Struct("<IIII")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_END = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_END = struct.Struct("<IHHHHIIH")
_FLAGS = 0x0808            # data descriptor follows the data; UTF-8 names
_ALIGN = 64
_LIMIT = 0xFFFFFFFF - 2 ** 20  # below zip64's per-record fields, with room for the small records
_ARCHIVE = b"archive/"     # torch.save to a stream names its archive "archive"
_M64 = 2 ** 64 - 1


class _Recorder:
    """Stands in for torch's PyTorchFileWriter: keeps the records `_save` would write."""

    def __init__(self):
        self.records: list[tuple[bytes, object]] = []
        self.storages: list[int] = []  # which records hold tensor storages

    def write_record(self, name, data, size):
        if isinstance(data, str):
            data = data.encode()
        elif isinstance(data, torch.UntypedStorage):
            self.storages.append(len(self.records))
            data = _storage_bytes(data)
        self.records.append((_ARCHIVE + name.encode(), memoryview(data)[:size]))

    def write_record_metadata(self, name, size):  # torch.serialization.skip_data(): not ours
        raise _Unsupported


class _Unsupported(Exception):
    pass


def _storage_bytes(storage: torch.UntypedStorage) -> memoryview:
    """The storage's bytes as a buffer, without a copy."""
    flat = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (storage.nbytes(),))
    return memoryview(flat.numpy()).cast("B")


def _hash_combine(seed: int, value: int) -> int:
    """c10::hash_combine on uint64 (how torch's writer folds the records' CRCs into the id)."""
    return (seed ^ ((value + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & _M64)) & _M64


class TensorBlob:
    """One tensor's torch.save bytes: `head`, the tensor's buffer `data`, `tail` (in that order)."""

    __slots__ = ("head", "data", "tail")

    def __init__(self, head: bytes, data: memoryview, tail: bytes):
        self.head, self.data, self.tail = head, data, tail

    @property
    def parts(self) -> list:
        return [self.head, self.data, self.tail]

    def __len__(self) -> int:
        return len(self.head) + self.data.nbytes + len(self.tail)


class _Archive:
    """Builds the zip container around the records, as torch's writer lays it out."""

    def __init__(self, names_hash: bytes):
        self.names_hash = names_hash
        self.pos, self.crcs, self.central = 0, 0, []

    def local(self, name: bytes, size: int) -> bytes:
        start = self.pos + _LOCAL.size + len(name) + 4
        padding = (-start) % _ALIGN
        extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
        head = _LOCAL.pack(0x04034B50, 0, _FLAGS, 0, 0, 0, 0, 0, 0, len(name), len(extra)) + name + extra
        self.central.append((name, self.pos, size))
        self.pos += len(head) + size
        return head

    def descriptor(self, crc: int) -> bytes:
        name, offset, size = self.central[-1]
        self.central[-1] = _CENTRAL.pack(0x02014B50, 0, 0, _FLAGS, 0, 0, 0, crc, size, size, len(name), 0, 0, 0, 0,
                                         0, offset) + name
        self.crcs = _hash_combine(self.crcs, crc)
        self.pos += _DESCRIPTOR.size
        return _DESCRIPTOR.pack(0x08074B50, crc, size, size)

    def small(self, name: bytes, data: bytes) -> bytes:
        return self.local(name, len(data)) + bytes(data) + self.descriptor(crc32(data))

    def end(self) -> bytes:
        sid = self.names_hash + b"%020d" % self.crcs
        parts = [self.small(_ARCHIVE + b".data/serialization_id", sid)]
        directory = b"".join(self.central)
        count, start = len(self.central), self.pos
        parts += [directory,
                  _ZIP64_END.pack(0x06064B50, 44, 0x031E, 0x2D, 0, 0, count, count, len(directory), start),
                  _ZIP64_LOCATOR.pack(0x07064B50, 0, start + len(directory), 1),
                  _END.pack(0x06054B50, 0, 0, count, count, len(directory), start, 0)]
        return b"".join(parts)


def _head(tensor: torch.Tensor, names_hash: bytes) -> tuple[bytes, memoryview, list, _Archive]:
    """The archive up to the tensor's data, the data, the records after it, the archive so far."""
    recorder = _Recorder()
    serialization._save(tensor, recorder, pickle, serialization.DEFAULT_PROTOCOL, False)
    records = recorder.records + [(_ARCHIVE + b"version", memoryview(b"3\n"))]
    if sum(r.nbytes for _, r in records) >= _LIMIT or min(r.nbytes for _, r in records) == 0:
        raise _Unsupported  # zip64 fields; an empty record is written without a data descriptor
    if len(recorder.storages) != 1:
        raise _Unsupported
    big = recorder.storages[0]
    archive = _Archive(names_hash)
    head = b"".join(archive.small(n, d) for n, d in records[:big]) + archive.local(records[big][0],
                                                                                   records[big][1].nbytes)
    return head, records[big][1], records[big + 1:], archive


def _blob(tensor: torch.Tensor, names_hash: bytes) -> TensorBlob:
    head, data, after, archive = _head(tensor, names_hash)
    tail = archive.descriptor(crc32(data)) + b"".join(archive.small(n, d) for n, d in after)
    return TensorBlob(head, data, tail + archive.end())


_NAMES_HASH: bytes | None = None
_CHECKED: bool | None = None


def supported() -> bool:
    """Whether `tensor_blob` reproduces this torch's torch.save (checked once, on a small tensor)."""
    global _CHECKED, _NAMES_HASH
    if _CHECKED is None:
        probe = torch.arange(40, dtype=torch.float32).reshape(1, 5, 8)
        reference = io.BytesIO()
        torch.save(probe, reference)
        try:
            with zipfile.ZipFile(io.BytesIO(reference.getvalue())) as z:
                _NAMES_HASH = z.read("archive/.data/serialization_id")[:20]
            blob = _blob(probe, _NAMES_HASH)
            _CHECKED = sys.byteorder == "little" and b"".join(bytes(p) for p in blob.parts) == reference.getvalue()
        except (_Unsupported, KeyError, zipfile.BadZipFile):
            _CHECKED = False
    return _CHECKED


def tensor_blob(tensor: torch.Tensor) -> TensorBlob | None:
    """torch.save(tensor)'s bytes in three parts, or None where the caller must use torch.save
    (unsupported torch version or settings, a 4 GiB archive). `tensor` must be a CPU tensor whose
    storage holds just its bytes (what torch's checkpoint writer hands to torch.save)."""
    if not supported():
        return None
    try:
        return _blob(tensor, _NAMES_HASH)
    except _Unsupported:
        return None


_HEADS: dict = {}


def stored_head(dtype: torch.dtype, sizes: tuple[int, ...]) -> bytes | None:
    """The bytes before the data in torch.save's archive of a contiguous tensor of `sizes` (what a
    stored checkpoint chunk starts with), or None where `tensor_blob` would not write it. A reader
    that finds exactly these bytes at a chunk's offset knows the data follows them."""
    key = (dtype, tuple(sizes))
    if key not in _HEADS:
        try:
            probe = torch.empty(sizes, dtype=dtype)  # never touched: only its pickle is made
            _HEADS[key] = _head(probe, _NAMES_HASH)[0] if supported() else None
        except _Unsupported:
            _HEADS[key] = None
    return _HEADS[key]


__all__ = ["TensorBlob", "stored_head", "supported", "tensor_blob"]
