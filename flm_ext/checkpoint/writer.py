"""Writing torch_dist checkpoint folders tensor by tensor, without a model or a process group.

megatron's `dist_checkpointing.save` takes the whole state dict at once, i.e. the model in memory
(1.2 TB with Adam state at 101B). Offline tools (growth, import from transformers, synthetic test
inputs) instead describe the output as `Chunk`s (shapes only) and write it with
torch.distributed.checkpoint, the storage layer megatron's torch_dist backend uses: a `SavePlanner`
whose `resolve_data` makes each chunk on demand. Every layer of a stacked `decoder.layers.*`
tensor is its own chunk, as in the trainer's checkpoints. Files are written in buckets because
torch's writer keeps every tensor of a file alive until the file is closed.
"""
from __future__ import annotations

import ctypes
import dataclasses
import io
import json
import multiprocessing
import os
import signal
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX, _StorageInfo
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, TensorWriteData, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

import xxhash

from flm_ext.checkpoint.direct_io import DirectFile, open_sequential
from flm_ext.checkpoint.integrity import ALGORITHM, describe_files, manifest_for_tree
from flm_ext.checkpoint.records import tensor_blob

DEFAULT_BUCKET_BYTES = 256 * 2 ** 20
TORCH_DIST_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                       "common_backend_version": 1}


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk of the output: a whole tensor, one layer of a stacked one, or a byte object."""

    key: str                    # checkpoint key (model key, or optimizer.state.<name>.<model key>)
    model_key: str | None       # the FLM tensor it is (None for byte objects)
    role: str | None            # param | exp_avg | exp_avg_sq (for growth)
    layer: int | None           # layer of a stacked tensor / per-layer object
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    global_size: tuple[int, ...]
    dtype: torch.dtype | None   # None for byte objects
    source_object: str | None = None  # byte objects: the input key whose bytes are copied

    @property
    def nbytes(self) -> int:
        if self.dtype is None:
            return 0
        n = 1
        for s in self.sizes:
            n *= s
        return n * torch.tensor([], dtype=self.dtype).element_size()


def tensor_chunks(key: str, model_key: str, role: str, shape: tuple[int, ...], dtype: torch.dtype,
                  num_layers: int | None) -> list[Chunk]:
    """The chunks of one tensor: one per layer when it is stacked over `num_layers`."""
    if num_layers is None:
        return [Chunk(key, model_key, role, None, (0,) * len(shape), shape, shape, dtype)]
    size = (num_layers,) + tuple(shape)
    return [Chunk(key, model_key, role, j, (j,) + (0,) * len(shape), (1,) + tuple(shape), size, dtype)
            for j in range(num_layers)]


def _metadata(chunks: list[Chunk]) -> Metadata:
    entries: dict = {}
    for c in chunks:
        if c.dtype is None:
            entries[c.key] = BytesStorageMetadata()
            continue
        md = entries.setdefault(c.key, TensorStorageMetadata(TensorProperties(dtype=c.dtype),
                                                             torch.Size(c.global_size), []))
        md.chunks.append(ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)))
    return Metadata(state_dict_metadata=entries)


def _write_item(c: Chunk) -> WriteItem:
    if c.dtype is None:
        return WriteItem(index=MetadataIndex(c.key), type=WriteItemType.BYTE_IO)
    return WriteItem(index=MetadataIndex(c.key, torch.Size(c.offsets)), type=WriteItemType.SHARD,
                     tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(c.offsets),
                                                                            torch.Size(c.sizes)),
                                                 properties=TensorProperties(dtype=c.dtype),
                                                 size=torch.Size(c.global_size)))


class _LazySavePlanner(SavePlanner):
    """Plans the output from `Chunk`s (shapes only); `produce(chunk)` makes each chunk when asked.

    With `prefetch`, the next tensor chunk of the same file is made in a helper thread while the
    current one is serialised and written (torch ops and file writes release the GIL), so making
    and writing overlap; memory grows by one chunk. One chunk is made at a time, in file order, so
    `produce` sees the calls it would see without prefetch (its reader is never used concurrently).
    """

    def __init__(self, chunks: list[Chunk], produce: Callable[[Chunk], object],
                 on_chunk: Callable[[Chunk], None] | None, prefetch: bool = False):
        self.chunks, self.produce, self.on_chunk = chunks, produce, on_chunk
        self.by_index = {_write_item(c).index: c for c in chunks}
        self.prefetch = prefetch
        self.next_in_file: dict = {}  # tensor item index -> the next tensor item's index in its file
        self.pending = None           # (index, Future) of the chunk being made ahead
        self.executor = None          # made lazily: never before a fork

    def plan_files(self, files: list[list[WriteItem]]) -> None:
        """The files' items in write order (torch writes each file's byte objects, then its tensors)."""
        for items in files:
            tensors = [item.index for item in items if item.type != WriteItemType.BYTE_IO]
            self.next_in_file.update(zip(tensors, tensors[1:]))

    def _make(self, index):
        pending, self.pending = self.pending, None
        if pending is not None:
            ahead, future = pending
            data = future.result()
            if ahead == index:
                return data
        return self.produce(self.by_index[index])

    def close(self) -> None:
        if self.pending is not None:
            self.pending[1].cancel()
            self.pending = None
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None

    def set_up_planner(self, state_dict, storage_meta=None, is_coordinator=False):
        pass

    def create_local_plan(self) -> SavePlan:
        return SavePlan([_write_item(c) for c in self.chunks])

    def create_global_plan(self, all_plans):
        return all_plans, _metadata(self.chunks)

    def finish_plan(self, new_plan):
        return new_plan

    def resolve_data(self, write_item):
        chunk = self.by_index[write_item.index]
        data = self._make(write_item.index)
        following = self.next_in_file.get(write_item.index) if self.prefetch else None
        if following is not None:
            if self.executor is None:
                self.executor = ThreadPoolExecutor(1, thread_name_prefix="flm-prefetch")
            self.pending = (following, self.executor.submit(self.produce, self.by_index[following]))
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        return data


def group_by_size(sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Consecutive indices in groups of at most `max_bytes` (a bigger item gets a group of its own):
    the files of a checkpoint bucket, the shards of an export."""
    groups, current, used = [], [], 0
    for index, size in enumerate(sizes):
        if current and used + size > max_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += size
    if current:
        groups.append(current)
    return groups


class _BucketedWriter(FileSystemWriter):
    """One file per bucket of at most `bucket_bytes` (or one chunk), written one bucket at a time
    (or by `workers` processes, one bucket each at a time)."""

    def __init__(self, path: str, bucket_bytes: int, sizes: dict, workers: int = 1, sync_files: bool = True,
                 direct: bool = True, beside: Callable[[], None] | None = None, unbuffered: bool = True):
        super().__init__(path, single_file_per_rank=True, thread_count=1, sync_files=sync_files)
        self.bucket_bytes, self.sizes, self.workers, self.direct = bucket_bytes, sizes, workers, direct
        self.beside, self.unbuffered = beside, unbuffered
        self.checksums: dict = {}  # {file name: {"size", "xxh3_64"}} of the files written

    def storage_meta(self):
        # torch would record the output path (a pathlib object) in .metadata: the folder is renamed
        # after writing, and the restricted metadata unpickler (integrity.py) refuses such objects.
        return None

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        groups = group_by_size([self.sizes.get(item.index, 0) for item in plan.items], self.bucket_bytes)
        buckets = [[plan.items[i] for i in group] for group in groups]
        prefix = plan.storage_data.prefix
        subs = [dataclasses.replace(plan, items=items,
                                    storage_data=dataclasses.replace(plan.storage_data, prefix=f"{prefix}{b}_"))
                for b, items in enumerate(buckets)]
        planner.plan_files(buckets)
        if self.workers > 1 and len(subs) > 1:
            results = _write_in_workers(self, subs, planner)
        else:
            results = []
            beside = _Beside(self.beside)
            try:
                for sub in subs:
                    beside.check()
                    written, checksums = _write_bucket_file(self, sub, planner)
                    self.checksums.update(checksums)
                    results += written
            finally:
                beside.join()
        done: Future = Future()
        done.set_result(results)
        return done


class _Beside:
    """`write_chunks(beside=...)` in one process: the job runs in a thread while the buckets are
    written; `check` re-raises its error before the next bucket, `join` at the end."""

    def __init__(self, job: Callable[[], None] | None):
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(job,), name="flm-beside", daemon=True)
        if job is not None:
            self.thread.start()

    def _run(self, job) -> None:
        try:
            job()
        except BaseException as e:  # noqa: BLE001 - handed to the writing thread
            self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def join(self) -> None:
        if self.thread.is_alive():
            self.thread.join()
        self.check()


# The forked workers' job: set before the pool forks, read by the children (nothing is pickled but
# bucket numbers, write results and progress messages).
_JOB: dict = {}


def _worker_start(progress) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)  # N workers share the cores
    planner = _JOB["planner"]
    planner.on_chunk = (lambda c: progress.put((c.key, c.offsets))) if planner.on_chunk is not None else None


def _checksum_written(folder: str, results: list) -> dict:
    """The manifest entries of the file(s) just written, hashed while they are still in the page
    cache (by the process that wrote them, in parallel, not re-read by the parent at the end), then
    released (`release_written`: write-back started, so the final fsync finds little left)."""
    names = sorted({r.storage_data.relative_path for r in results})
    entries = describe_files(folder, names)
    for name in names:
        release_written(os.path.join(folder, name))
    return entries


_LAST_WRITTEN: list = []  # per process: the file `release_written` saw last


def release_written(path: str) -> None:
    """Start the write-back of the file just written, and drop the pages of the one before it.

    POSIX_FADV_DONTNEED writes dirty pages back without waiting, but drops only pages already
    clean; asked again one file later (that file's write-back has had a file's time to finish) it
    drops the rest. So the page cache holds about two files of the output, not all of it, and the
    next writes reuse pages just freed: on a VM whose free memory goes back to the host, filling
    fresh page-cache pages was most of the growth's kernel time (docs/BENCHMARKS.md). The output
    is never read back by the writer. Linux only; elsewhere the final fsync writes everything."""
    if not hasattr(os, "posix_fadvise"):
        return
    for name in [*_LAST_WRITTEN, path]:
        try:
            fd = os.open(name, os.O_RDONLY)
        except OSError:
            continue  # renamed or removed since: nothing to drop
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    _LAST_WRITTEN[:] = [path]


def _write_bucket(b: int) -> tuple[list, dict] | None:
    if _JOB["stop"].is_set():
        return None  # the parent is giving up (its `beside` job failed): skip what is left
    return _write_bucket_file(_JOB["writer"], _JOB["subs"][b], _JOB["planner"])


def _write_bucket_file(writer: _BucketedWriter, sub: SavePlan, planner: SavePlanner) -> tuple[list, dict]:
    """One bucket's file: its write results and manifest entry. `writer.direct` writes the records
    with `_write_records` (the same bytes as torch's writer, checked by the tests), else torch's
    FileSystemWriter writes them and the file is hashed afterwards."""
    try:
        if writer.direct:
            return _write_records(writer, sub, planner)
        results = FileSystemWriter.write_data(writer, sub, planner).wait()
    finally:
        planner.close()
    return results, _checksum_written(str(writer.path), results)


class _BufferedFile:
    """The page-cache twin of `direct_io.DirectFile` (the same write / close / abort), where the
    file system refuses O_DIRECT or the caller asks for buffered writes; `release_written` on close."""

    def __init__(self, path: str):
        self.path, self.fd = path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        total = view.nbytes
        while view.nbytes:
            view = view[os.write(self.fd, view):]
        return total

    def close(self, sync: bool = False) -> None:
        if sync:
            os.fsync(self.fd)
        self.abort()
        release_written(self.path)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(out: DirectFile | _BufferedFile, parts: list, digest) -> int:
    """Append buffers to `out`, feeding them to `digest`."""
    views = [memoryview(p).cast("B") for p in parts]
    for view in views:
        digest.update(view)
    return sum(out.write(view) for view in views)


def _tensor_parts(tensor: torch.Tensor) -> list:
    """torch.save(tensor)'s bytes as buffers (see records.py; torch.save itself where that cannot)."""
    tensor = tensor.detach().cpu()
    if tensor.untyped_storage().nbytes() != tensor.nbytes:
        tensor = tensor.clone()  # as torch's writer does: a view is saved with just its own bytes
    blob = tensor_blob(tensor)
    if blob is not None:
        return blob.parts
    stream = io.BytesIO()
    torch.save(tensor, stream)
    return [stream.getbuffer()]


def _write_records(writer: _BucketedWriter, sub: SavePlan, planner: SavePlanner) -> tuple[list, dict]:
    """The bucket's file as torch's FileSystemWriter lays it out (its byte objects, then its tensors,
    each a torch.save blob, at the offsets the write results record), written from the tensors'
    buffers and hashed for the manifest on the way (the file is not read back). Each tensor is
    released once written, so memory holds one tensor (plus the one the planner makes ahead)."""
    name = f"{sub.storage_data.prefix}0{DEFAULT_SUFFIX}"
    path = os.path.join(str(writer.path), name)
    digest, results, offset = xxhash.xxh3_64(), [], 0
    items = ([i for i in sub.items if i.type == WriteItemType.BYTE_IO]
             + [i for i in sub.items if i.type != WriteItemType.BYTE_IO])
    out = (open_sequential(path) if writer.unbuffered else None) or _BufferedFile(path)
    try:
        for item in items:
            data = planner.resolve_data(item)
            parts = [data.getbuffer()] if item.type == WriteItemType.BYTE_IO else _tensor_parts(data)
            length = _write_all(out, parts, digest)
            del data, parts
            results.append(WriteResult(index=item.index, size_in_bytes=length,
                                       storage_data=_StorageInfo(name, offset, length)))
            offset += length
        out.close(sync=writer.sync_files)
    finally:
        out.abort()  # after close: nothing left to do
    return results, {name: {"size": offset, ALGORITHM: digest.hexdigest()}}


def _write_in_workers(writer: _BucketedWriter, subs: list[SavePlan], planner: _LazySavePlanner) -> list:
    """The buckets written by `writer.workers` forked processes; write results in bucket order."""
    ctx = multiprocessing.get_context("fork")
    progress = ctx.SimpleQueue()
    by_name = {(c.key, c.offsets): c for c in planner.chunks}
    on_chunk = planner.on_chunk

    def relay():
        while (message := progress.get()) is not None:
            on_chunk(by_name[message])

    relay_thread = threading.Thread(target=relay, daemon=True)
    if on_chunk is not None:
        relay_thread.start()
    _JOB.update(writer=writer, subs=subs, planner=planner, stop=ctx.Event())
    pending = None
    try:
        with ctx.Pool(min(writer.workers, len(subs)), initializer=_worker_start, initargs=(progress,)) as pool:
            pending = pool.map_async(_write_bucket, range(len(subs)), chunksize=1)
            if writer.beside is not None:
                try:
                    writer.beside()  # here, after the fork: the workers never inherit its thread
                except BaseException:
                    # Let the workers finish the file in hand and skip the rest, rather than kill
                    # them mid-write (a worker killed while holding a queue's lock hangs the pool).
                    _JOB["stop"].set()
                    pending.wait()
                    raise
            per_bucket = pending.get()
    finally:
        _JOB.clear()
        # Only when every task finished: a pool terminated mid-task (Ctrl-C, SIGTERM) may have
        # killed a worker inside progress.put, holding its lock; the relay (a daemon) is then left.
        if on_chunk is not None and pending is not None and pending.ready():
            progress.put(None)
            relay_thread.join()
    # The parent's own index objects, as in one process: pickle shares them with the metadata's keys,
    # so `.metadata` comes out byte-identical.
    canonical = {item.index: item.index for sub in subs for item in sub.items}
    for _, checksums in per_bucket:
        writer.checksums.update(checksums)
    return [dataclasses.replace(r, index=canonical[r.index]) for results, _ in per_bucket for r in results]


def keep_freed_memory() -> None:
    """Let this process reuse the memory of freed chunk tensors instead of returning it to the OS.

    glibc serves blocks above 32 MiB (a grown layer of a large FFN) with a fresh mmap and unmaps
    them when freed, so every chunk of an offline tool would fault in new zeroed pages: about half
    of its CPU time went to the kernel. With the thresholds raised, freed chunks stay in the heap
    and the next chunk reuses their pages (the peak stays one bucket plus two chunks). Process-wide;
    for the offline tools, never the trainer. A no-op where mallopt is missing (not glibc)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 2 ** 30)
    mallopt(m_trim_threshold, 2 ** 31 - 1)


def write_chunks(out_dir: str, chunks: list[Chunk], produce: Callable[[Chunk], object], *,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, on_chunk: Callable[[Chunk], None] | None = None,
                 workers: int = 1, sync_files: bool = True, prefetch: bool = False, direct: bool = True,
                 beside: Callable[[], None] | None = None, unbuffered: bool = True) -> dict:
    """Write the tensors / byte objects of a torch_dist folder, producing each chunk on demand
    (in `workers` processes, bucket by bucket; the same bytes as in one). `sync_files=False` skips
    the fsync after each file, for a caller that fsyncs the whole folder once at the end (as
    `fileio.building` does): the disk then writes back while the next chunks are made.
    `prefetch`: make the next chunk while the current one is written (see `_LazySavePlanner`).
    `direct=False` lets torch's own writer serialise the records (the reference the tests compare
    the default, `_write_records`, against).
    `unbuffered`: write the records past the page cache (direct_io.py, O_DIRECT) where the file
    system allows it; False writes them through it (the same bytes).
    `beside`: a job run in this process while the chunks are written (growth verifies its input's
    shards there: one disk pass instead of a serial one before); its error stops the write.
    Returns the manifest entries of the files written (for `finish_iteration_folder`)."""
    sizes = {_write_item(c).index: c.nbytes for c in chunks}
    writer = _BucketedWriter(out_dir, max(bucket_bytes, 1), sizes, workers, sync_files, direct, beside, unbuffered)
    try:
        with warnings.catch_warnings():  # one process on purpose: not news to a tool's user
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
            dcp_save({}, storage_writer=writer, planner=_LazySavePlanner(chunks, produce, on_chunk, prefetch),
                     no_dist=True)
        return writer.checksums
    except CheckpointException as e:
        # torch wraps every failure (even Ctrl-C / SystemExit from SIGTERM): re-raise the real one.
        original = next(iter(e.failures.values()), None)
        if isinstance(original, tuple) and original and isinstance(original[0], BaseException):
            raise original[0] from None
        raise


def finish_iteration_folder(folder: str, record, checksums: dict | None = None) -> None:
    """Write megatron's `common.pt` (from `record`, a `CheckpointRecord`) and `metadata.json` next to
    the shards, then the manifest (`checksums`: entries `write_chunks` already made; every other
    file is hashed here)."""
    path = os.path.join(folder, "common.pt")
    torch.save(record.to_dict(path), path)
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump(TORCH_DIST_METADATA, f)
    manifest_for_tree(folder, checksums)


# Linear layers whose megatron modules save an `_extra_state` object per layer (empty without
# transformer-engine's fp8 state); megatron's loader expects them.
EXTRA_STATE_MODULES = ("self_attention.linear_proj", "self_attention.linear_qkv", "mlp.linear_fc1", "mlp.linear_fc2")


def extra_state_chunks(num_layers: int) -> list[Chunk]:
    """The per-layer `_extra_state` byte objects of an offline writer's checkpoint (see `empty_extra_state`)."""
    return [Chunk(f"decoder.layers.{module}._extra_state/shard_{j}_{num_layers}", None, None, j, (), (), (), None)
            for module in EXTRA_STATE_MODULES for j in range(num_layers)]


def empty_extra_state() -> io.BytesIO:
    """What megatron's linear layers save as their (empty) extra state."""
    buffer = io.BytesIO()
    torch.save([None], buffer)
    buffer.seek(0)
    return buffer
