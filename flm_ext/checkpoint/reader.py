"""Reading a checkpoint without a model or a process group: verified, safe, any saved TP/PP.

`open_checkpoint(path)` resolves a run root or an `iter_N` folder, verifies it (manifest checksums,
metadata and common state read without running code) and returns a `Checkpoint`: its record
(schema.py: iteration, the `FLMConfig` it stores, growth...), and a `CheckpointReader` that reads any
global slice of any tensor. torch.distributed.checkpoint's own resharding
(`create_read_items_for_chunk_list`) maps a requested slice onto the stored chunks, whatever TP/PP
wrote them, so growth, evaluation and export read one layer or one tensor at a time.
"""
from __future__ import annotations

import dataclasses
import os
import sys

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, MetadataIndex,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from flm_ext.checkpoint import integrity
from flm_ext.checkpoint.layout import CheckpointError, resolve
from flm_ext.checkpoint.schema import CheckpointRecord, read_record
from flm_ext.checkpoint.records import stored_head
from flm_ext.config import FLMConfig


class _SliceLoader(LoadPlanner):
    """Copies the read chunks into one destination tensor (or collects a byte object)."""

    def __init__(self, dest: torch.Tensor | None):
        self.dest, self.data = dest, None

    def resolve_tensor(self, read_item):
        # dest_offsets are relative to the requested slice
        return self.dest[tuple(slice(o, o + n) for o, n in zip(read_item.dest_offsets, read_item.lengths))]

    def commit_tensor(self, read_item, tensor):
        pass

    def load_bytes(self, read_item, value):
        self.data = value.read()

    # The rest of the LoadPlanner interface; only read_data's callbacks above are used.
    def set_up_planner(self, *args, **kwargs):
        pass

    def create_local_plan(self):
        raise NotImplementedError

    def create_global_plan(self, plans):
        return plans

    def finish_plan(self, plan):
        return plan


def _pread_into(fd: int, dest: torch.Tensor, offset: int, path: str, what: str) -> None:
    """Fill the contiguous tensor `dest` from the file at `offset` (CheckpointError if it ends early)."""
    view = memoryview(dest.reshape(-1).view(torch.uint8).numpy())
    while view.nbytes:
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise CheckpointError(f"{path}: ends inside {what} (checkpoint damaged)")
        view, offset = view[n:], offset + n


class CheckpointReader:
    """Global slices of the tensors (and the byte objects) of one torch_dist folder."""

    def __init__(self, folder: str):
        self.folder = folder
        self.metadata = integrity.load_metadata(folder)  # never plain pickle
        self.reader = FileSystemReader(folder)
        self.reader.set_up_storage_reader(self.metadata, is_coordinator=True)
        entries = self.metadata.state_dict_metadata.items()
        self.tensors = {k: v for k, v in entries if isinstance(v, TensorStorageMetadata)}
        self.objects = [k for k, v in entries if isinstance(v, BytesStorageMetadata)]
        self._chunk_sizes: dict = {}

    def _read(self, plan: LoadPlan, loader: _SliceLoader, what: str) -> None:
        try:
            rest = self._read_direct(plan.items, loader, what) if loader.dest is not None else plan.items
            if rest:
                self.reader.read_data(LoadPlan(rest), loader).wait()
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - a truncated or deleted shard surfaces in many types
            raise CheckpointError(f"{self.folder}: reading {what} failed ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}) "
                                  f"(checkpoint damaged)") from None

    def _read_direct(self, items: list[ReadItem], loader: _SliceLoader, what: str) -> list[ReadItem]:
        """Read whole stored chunks straight into the destination (one pread, no torch.load) where
        the chunk's archive starts with exactly the bytes torch.save writes before a contiguous
        tensor of its shape (records.stored_head); returns the items left to torch's reader."""
        rest, files = [], {}
        try:
            for item in items:
                info = self.reader.storage_data.get(item.storage_index)
                key, offsets = item.storage_index.fqn, tuple(item.storage_index.offset or ())
                md = self.tensors.get(key)
                sizes = self._stored_sizes(key).get(offsets) if md is not None else None
                head = (stored_head(md.properties.dtype, sizes)
                        if sizes is not None and not getattr(info, "transform_descriptors", None) else None)
                target = loader.resolve_tensor(item) if head is not None else None
                if (head is None or tuple(item.lengths) != sizes or any(item.storage_offsets)
                        or info.length < len(head) + target.nbytes):
                    rest.append(item)
                    continue
                if info.relative_path not in files:
                    files[info.relative_path] = os.open(os.path.join(self.folder, info.relative_path), os.O_RDONLY)
                fd = files[info.relative_path]
                if os.pread(fd, len(head), info.offset) != head:
                    rest.append(item)
                    continue
                dest = target if target.is_contiguous() else torch.empty(sizes, dtype=target.dtype)
                _pread_into(fd, dest, info.offset + len(head), f"{self.folder}/{info.relative_path}", what)
                if dest is not target:
                    target.copy_(dest)
        finally:
            for fd in files.values():
                os.close(fd)
        return rest

    def _stored_sizes(self, key: str) -> dict:
        """{stored chunk offsets: sizes} of one tensor."""
        if key not in self._chunk_sizes:
            self._chunk_sizes[key] = {tuple(c.offsets): tuple(c.sizes) for c in self.tensors[key].chunks}
        return self._chunk_sizes[key]

    def read(self, key: str, offsets: tuple[int, ...] | None = None, sizes: tuple[int, ...] | None = None
             ) -> torch.Tensor:
        md = self.tensors[key]
        offsets = tuple(offsets) if offsets is not None else (0,) * len(md.size)
        sizes = tuple(sizes) if sizes is not None else tuple(md.size)
        out = torch.empty(sizes, dtype=md.properties.dtype)
        items = create_read_items_for_chunk_list(key, md, [ChunkStorageMetadata(torch.Size(offsets),
                                                                                 torch.Size(sizes))])
        self._read(LoadPlan(items), _SliceLoader(out), key)
        return out

    def read_layer(self, key: str, layer: int) -> torch.Tensor:
        """Layer `layer` of a stacked [L, ...] tensor, without the layer axis."""
        size = tuple(self.tensors[key].size)
        return self.read(key, (layer,) + (0,) * (len(size) - 1), (1,) + size[1:])[0]

    def read_bytes(self, key: str) -> bytes:
        item = ReadItem(type=LoadItemType.BYTE_IO, dest_index=MetadataIndex(key), dest_offsets=torch.Size(()),
                        storage_index=MetadataIndex(key), storage_offsets=torch.Size(()), lengths=torch.Size(()))
        loader = _SliceLoader(None)
        self._read(LoadPlan([item]), loader, key)
        return loader.data


def check_objects(reader: CheckpointReader, part: int = 0, parts: int = 1) -> None:
    """Every byte object (RNG state, extra state) in this share must be plain data."""
    for key in reader.objects[part::parts]:
        integrity.check_byte_object(reader.folder, key, reader.read_bytes(key))


def verify_checkpoint(folder: str, *, part: int = 0, parts: int = 1, checksums: bool = True) -> int:
    """Verify `folder` before torch or megatron unpickle anything in it; returns bytes checksummed.

    With `parts` > 1 each caller (rank) checks its share of the files and byte objects, so the
    ranks of a job verify in parallel. `checksums=False` keeps only the safety checks. Raises
    CheckpointError naming the file.
    """
    names = integrity.manifest_names(folder) if checksums else None
    checked = integrity.verify_files(folder, names[part::parts]) if names is not None else 0
    integrity.load_common(folder)
    check_objects(CheckpointReader(folder), part, parts)
    return checked


@dataclasses.dataclass
class Checkpoint:
    """One verified iteration folder, read lazily through `reader`."""

    folder: str
    record: CheckpointRecord  # everything common.pt stores (schema.py)
    reader: CheckpointReader

    @property
    def iteration(self) -> int:
        return self.record.iteration

    @property
    def config(self) -> FLMConfig:
        return self.record.model_config

    unverified: tuple[str, ...] = ()  # shard files whose checksums are still to check (defer_shards)

    def verify_shards(self) -> int:
        """Check the checksums `open_checkpoint(defer_shards=True)` left; returns bytes checked."""
        return integrity.verify_files(self.folder, list(self.unverified)) if self.unverified else 0

    @property
    def growth_record(self) -> dict | None:
        """The MSG growth record (masks still ramping), or None."""
        return self.record.growth or None


def open_checkpoint(path: str, iteration: int | None = None, *, verify: bool = True,
                    defer_shards: bool = False) -> Checkpoint:
    """A verified checkpoint at `path` (run root: its latest or `iteration`; or an iter_N folder).

    `defer_shards`: check the `.distcp` shards' checksums later (`Checkpoint.verify_shards`), for a
    reader that copies raw tensor bytes and can check while it works (growth: its output is only
    renamed into place after the check). Everything that is unpickled is still checked first;
    byte objects inside the shards are loaded weights_only, and if one is refused the shards'
    checksums are checked before saying so, so a damaged file is named as damaged."""
    folder, it = resolve(path, iteration)
    names = integrity.manifest_names(folder) if verify else None
    later = tuple(n for n in names if n.endswith(".distcp")) if names is not None and defer_shards else ()
    if verify:
        if names is None:
            print(f"warning: {folder} has no {integrity.MANIFEST} (written by an older version): "
                  f"its files cannot be checksum-verified", file=sys.stderr, flush=True)
        else:  # first: nothing is unpickled from a damaged file
            integrity.verify_files(folder, [n for n in names if n not in later])
    reader = CheckpointReader(folder)  # .metadata through the restricted unpickler
    record = read_record(folder)  # weights_only
    checkpoint = Checkpoint(folder, record.replace(iteration=it), reader, later)
    if verify:
        try:
            check_objects(reader)
        except CheckpointError:
            checkpoint.verify_shards()
            raise
    return checkpoint
