"""Grow a torch_dist training checkpoint offline, tensor by tensor (FLM's 16B -> 51B -> 101B steps).

`grow_checkpoint(load, save, new_config)` reads a checkpoint the trainer wrote (any TP/PP: the
torch_dist format stores global tensors as chunks, and we read global slices) and writes one the
trainer loads at any TP/PP, with the model, Adam moments and fp32 main weights grown by
`operators.py` and the growth record (`flm.growth`) the trainer turns into masks.

Why not megatron's `dist_checkpointing.save`: it takes the whole state dict at once, i.e. the grown
model in memory (1.2 TB with Adam state at 101B). Instead the output is planned from shapes
alone and written with torch.distributed.checkpoint (the storage layer megatron's torch_dist
backend uses): a `SavePlanner` whose `resolve_data` grows each chunk on demand from the slices of
the old checkpoint it needs. Every layer of a stacked `decoder.layers.*` tensor is its own chunk
(as in the trainer's checkpoints), so the largest thing in memory is one layer of one tensor or
one non-layer tensor (the embedding), plus the old slices it is grown from. The writer gets the
chunks in buckets (one file each) because torch's writer keeps every tensor of a file alive until
the file is closed. megatron's `common.pt` and `metadata.json` are written next to them.

The result is built in `<save>.partial/` and renamed to `<save>` only when complete, so an
interrupted growth leaves no checkpoint at `<save>` (a stale `.partial` is removed by the next run).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import time
import zlib
from torch.futures import Future
from dataclasses import asdict
from typing import Callable

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorProperties, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import (LoadPlan, LoadPlanner, SavePlan, SavePlanner, TensorWriteData,
                                                  WriteItem, WriteItemType)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from flm_ext.config import FLMConfig
from flm_ext.growth.masks import GrowthState
from flm_ext.growth.operators import _TENSORS, GrowthPlan, grow_layer, grow_width, is_growable, is_layer_key
from flm_ext.training.checkpointing import LATEST, iteration_dir  # the trainer's checkpoint layout

_OPTIMIZER_PREFIX = re.compile(r"^optimizer\.state\.(exp_avg_sq|exp_avg|fp32_param|param)\.(.+)$")
_OBJECT_KEY = re.compile(r"^(.+)/shard_([0-9.]+)_([0-9.]+)$")
_ROLE = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "fp32_param": "param", "param": "param"}
DEFAULT_BUCKET_BYTES = 256 * 2 ** 20
_TENSOR_KEYS = tuple(_TENSORS)  # every FLM tensor the growth operators know


class GrowCheckpointError(ValueError):
    """The growth cannot be done (bad input checkpoint, output path, or shapes); names the path or flag."""


# --- reading global slices of an existing checkpoint ---------------------------------------------

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

    # The LoadPlanner interface; only read_data's callbacks above are used here.
    def set_up_planner(self, *args, **kwargs):
        pass

    def create_local_plan(self):
        raise NotImplementedError

    def create_global_plan(self, plans):
        return plans

    def finish_plan(self, plan):
        return plan


class CheckpointReader:
    """Global slices of the tensors of one torch_dist checkpoint folder, read without a process group.

    torch.distributed.checkpoint's own resharding (`create_read_items_for_chunk_list`) maps a
    requested slice onto the stored chunks, whatever TP/PP wrote them.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.reader = FileSystemReader(folder)
        self.metadata = self.reader.read_metadata()
        self.reader.set_up_storage_reader(self.metadata, is_coordinator=True)
        self.tensors = {k: v for k, v in self.metadata.state_dict_metadata.items()
                        if isinstance(v, TensorStorageMetadata)}
        self.objects = [k for k, v in self.metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]

    def read(self, key: str, offsets: tuple[int, ...] | None = None, sizes: tuple[int, ...] | None = None
             ) -> torch.Tensor:
        md = self.tensors[key]
        offsets = tuple(offsets) if offsets is not None else (0,) * len(md.size)
        sizes = tuple(sizes) if sizes is not None else tuple(md.size)
        out = torch.empty(sizes, dtype=md.properties.dtype)
        items = create_read_items_for_chunk_list(key, md, [ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes))])
        self.reader.read_data(LoadPlan(items), _SliceLoader(out)).wait()
        return out

    def read_layer(self, key: str, layer: int) -> torch.Tensor:
        """Layer `layer` of a stacked [L, ...] tensor, without the layer axis."""
        size = tuple(self.tensors[key].size)
        return self.read(key, (layer,) + (0,) * (len(size) - 1), (1,) + size[1:])[0]

    def read_bytes(self, key: str) -> bytes:
        from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

        item = ReadItem(type=LoadItemType.BYTE_IO, dest_index=MetadataIndex(key), dest_offsets=torch.Size(()),
                        storage_index=MetadataIndex(key), storage_offsets=torch.Size(()), lengths=torch.Size(()))
        loader = _SliceLoader(None)
        self.reader.read_data(LoadPlan([item]), loader).wait()
        return loader.data


# --- what the grown checkpoint holds --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Chunk:
    """One chunk of the output: a whole tensor, one layer of a stacked one, or a byte object."""

    key: str                    # checkpoint key (model or optimizer.state.<name>.<model key>)
    model_key: str | None       # the FLM tensor it is (None for byte objects)
    role: str | None
    layer: int | None           # grown model's layer for stacked tensors / per-layer objects
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    global_size: tuple[int, ...]
    dtype: torch.dtype | None
    source_object: str | None = None  # byte objects: the old key whose bytes are copied

    @property
    def nbytes(self) -> int:
        if self.dtype is None:
            return 0
        n = 1
        for s in self.sizes:
            n *= s
        return n * torch.tensor([], dtype=self.dtype).element_size()


def _split_key(key: str) -> tuple[str, str]:
    """Checkpoint key -> (FLM model key, growth role)."""
    match = _OPTIMIZER_PREFIX.match(key)
    if match:
        return match.group(2), _ROLE[match.group(1)]
    return key, "param"


def plan_chunks(reader: CheckpointReader, plan: GrowthPlan) -> list[_Chunk]:
    """Every chunk of the grown checkpoint, checking the old tensors against the old config first."""
    chunks: list[_Chunk] = []
    old_layers, new_layers = plan.old.num_layers, plan.new.num_layers
    for key, md in reader.tensors.items():
        model_key, role = _split_key(key)
        if not is_growable(model_key):
            raise GrowCheckpointError(f"{reader.folder}: tensor {key!r} is not an FLM tensor this tool can grow")
        old_shape, new_shape = plan.shapes(model_key)
        layered = is_layer_key(model_key)
        expected = ((old_layers,) + old_shape) if layered else old_shape
        if tuple(md.size) != expected:
            raise GrowCheckpointError(f"{reader.folder}: {key} has shape {tuple(md.size)}, but the checkpoint's own "
                                      f"model config (flm.model_config) implies {expected}")
        dtype = md.properties.dtype
        if layered:
            size = (new_layers,) + new_shape
            for j in range(new_layers):
                chunks.append(_Chunk(key, model_key, role, j, (j,) + (0,) * len(new_shape), (1,) + new_shape, size,
                                     dtype))
        else:
            chunks.append(_Chunk(key, model_key, role, None, (0,) * len(new_shape), new_shape, new_shape, dtype))
    sources = plan.layer_sources()
    for key in reader.objects:
        match = _OBJECT_KEY.match(key)
        base = match.group(1) if match else key
        if base == "rng_state":
            continue  # per-rank RNG of the old layout: the trainer reseeds (parallel_layout is None)
        if match and base.startswith("decoder.layers.") and "." not in match.group(2):
            offset, count = int(match.group(2)), int(match.group(3))
            if count != old_layers:
                raise GrowCheckpointError(f"{reader.folder}: object {key!r} is not per layer of {old_layers}")
            if offset != 0:
                continue  # planned once, from layer 0's entry
            for j, (src, _) in enumerate(sources):
                source = f"{base}/shard_{src if src is not None else 0}_{old_layers}"
                chunks.append(_Chunk(f"{base}/shard_{j}_{new_layers}", None, None, j, (), (), (), None, source))
        else:
            chunks.append(_Chunk(key, None, None, None, (), (), (), None, key))
    return chunks


def _metadata(chunks: list[_Chunk]) -> Metadata:
    entries: dict = {}
    for c in chunks:
        if c.dtype is None:
            entries[c.key] = BytesStorageMetadata()
            continue
        md = entries.setdefault(c.key, TensorStorageMetadata(TensorProperties(dtype=c.dtype), torch.Size(c.global_size),
                                                             []))
        md.chunks.append(ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)))
    return Metadata(state_dict_metadata=entries)


def _write_item(c: _Chunk) -> WriteItem:
    if c.dtype is None:
        return WriteItem(index=MetadataIndex(c.key), type=WriteItemType.BYTE_IO)
    return WriteItem(index=MetadataIndex(c.key, torch.Size(c.offsets)), type=WriteItemType.SHARD,
                     tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)),
                                                 properties=TensorProperties(dtype=c.dtype),
                                                 size=torch.Size(c.global_size)))


class Progress:
    """Periodic 'chunk i/N, GB written, MB/s, ETA' lines (at most every `interval` seconds, and at the end)."""

    def __init__(self, total_chunks: int, total_bytes: int, emit: Callable[[str], None], interval: float = 5.0):
        self.total_chunks, self.total_bytes, self.emit, self.interval = total_chunks, total_bytes, emit, interval
        self.done_chunks = self.done_bytes = 0
        self.start = self.last = time.time()

    def step(self, chunk: _Chunk) -> None:
        self.done_chunks += 1
        self.done_bytes += chunk.nbytes
        now = time.time()
        if now - self.last >= self.interval or self.done_chunks == self.total_chunks:
            self.last = now
            elapsed = max(now - self.start, 1e-9)
            rate = self.done_bytes / elapsed
            eta = (self.total_bytes - self.done_bytes) / rate if rate > 0 else 0.0
            where = chunk.key + (f" [layer {chunk.layer}]" if chunk.layer is not None else "")
            self.emit(f"grow: chunk {self.done_chunks}/{self.total_chunks} ({where}) | "
                      f"{self.done_bytes / 2 ** 30:.2f}/{self.total_bytes / 2 ** 30:.2f} GiB | "
                      f"{rate / 2 ** 20:.1f} MiB/s | elapsed {elapsed:.0f}s | ETA {eta:.0f}s")


class _LazySavePlanner(SavePlanner):
    """Plans the output from `_Chunk`s (shapes only); `produce(chunk)` makes each chunk when the writer asks."""

    def __init__(self, chunks: list[_Chunk], produce: Callable[[_Chunk], object], progress: Progress | None):
        self.chunks, self.produce, self.progress = chunks, produce, progress
        self.by_index = {_write_item(c).index: c for c in chunks}

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
        data = self.produce(chunk)
        if self.progress is not None:
            self.progress.step(chunk)
        return data


def _grower(reader: CheckpointReader, plan: GrowthPlan) -> Callable[[_Chunk], object]:
    """Grows one output chunk from the old checkpoint's slices it needs."""
    def produce(c: _Chunk):
        if c.dtype is None:
            return io.BytesIO(reader.read_bytes(c.source_object))
        if c.layer is None:
            return grow_width(c.model_key, reader.read(c.key), plan, c.role).contiguous()
        grown = grow_layer(c.model_key, lambda i: reader.read_layer(c.key, i), plan, c.layer, c.role, dtype=c.dtype)
        return grown.unsqueeze(0).contiguous()
    return produce


def write_chunks(out_dir: str, chunks: list[_Chunk], produce: Callable[[_Chunk], object], *,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, progress: Progress | None = None) -> None:
    """Write the tensors/objects of a torch_dist checkpoint folder, producing each chunk on demand."""
    sizes = {_write_item(c).index: c.nbytes for c in chunks}
    writer = _BucketedWriter(out_dir, max(bucket_bytes, 1), sizes)
    try:
        dcp_save({}, storage_writer=writer, planner=_LazySavePlanner(chunks, produce, progress), no_dist=True)
    except CheckpointException as e:
        # torch wraps every failure (even Ctrl-C / SystemExit from SIGTERM): re-raise the real one.
        original = next(iter(e.failures.values()), None)
        if isinstance(original, tuple) and original and isinstance(original[0], BaseException):
            raise original[0] from None
        raise


class _BucketedWriter(FileSystemWriter):
    """One file per bucket of at most `bucket_bytes` (or one chunk), written one bucket at a time.

    torch's writer keeps every tensor of the file it is writing alive until that file is done,
    so bounding the bytes per file bounds the memory (one file per rank would hold the model).
    """

    def __init__(self, path: str, bucket_bytes: int, sizes: dict):
        super().__init__(path, single_file_per_rank=True, thread_count=1, sync_files=True)
        self.bucket_bytes, self.sizes = bucket_bytes, sizes

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        buckets, current, used = [], [], 0
        for item in plan.items:
            size = self.sizes.get(item.index, 0)
            if current and used + size > self.bucket_bytes:
                buckets.append(current)
                current, used = [], 0
            current.append(item)
            used += size
        if current:
            buckets.append(current)
        results = []
        prefix = plan.storage_data.prefix
        for b, items in enumerate(buckets):
            sub = dataclasses.replace(plan, items=items,
                                      storage_data=dataclasses.replace(plan.storage_data, prefix=f"{prefix}{b}_"))
            results.extend(super().write_data(sub, planner).wait())
        done: Future = Future()
        done.set_result(results)
        return done


# --- the whole operation -------------------------------------------------------------------------

def _resolve_input(load: str) -> tuple[str, int]:
    """(checkpoint folder, iteration) of a complete trainer checkpoint, else a named error."""
    from flm_ext.training.checkpointing import CheckpointError, resolve

    if not os.path.exists(load):
        raise GrowCheckpointError(f"--load {load}: no such file or directory")
    try:
        folder, iteration = resolve(load)
    except CheckpointError as e:
        raise GrowCheckpointError(f"--load {load}: not a complete checkpoint ({e})") from None
    for name in ("metadata.json", "common.pt", ".metadata"):
        if not os.path.exists(os.path.join(folder, name)):
            raise GrowCheckpointError(f"--load {load}: not a complete checkpoint ({folder} has no {name})")
    with open(os.path.join(folder, "metadata.json")) as f:
        backend = json.load(f).get("sharded_backend")
    if backend != "torch_dist":
        raise GrowCheckpointError(f"--load {load}: sharded backend {backend!r} is not torch_dist")
    return folder, iteration


def old_config(common: dict, where: str) -> FLMConfig:
    try:
        return FLMConfig(**common["flm"]["model_config"])
    except (KeyError, TypeError) as e:
        raise GrowCheckpointError(f"{where}: no usable flm.model_config in the checkpoint ({e})") from None


def grown_common(common: dict, plan: GrowthPlan, ramp_steps: int, iteration: int, source: str) -> dict:
    """The new checkpoint's non-tensor part: the old one's training position, optimizer hyper-parameters
    and LR schedule, the new config, the growth record; no parallel layout (so no RNG restore)."""
    out = dict(common)
    out["iteration"] = iteration
    out["parallel_layout"] = None
    flm = dict(common.get("flm", {}))
    flm["model_config"] = asdict(plan.new)
    flm["growth"] = GrowthState.from_plan(plan, ramp_steps, start_iteration=iteration).to_dict()
    flm["grown_from"] = {"path": os.path.abspath(source), "model_config": asdict(plan.old),
                         "depth_init": plan.depth_init, "depth_placement": plan.depth_placement, "seed": plan.seed}
    out["flm"] = flm
    return out


def grow_checkpoint(load: str, save: str, overrides: dict, *, depth_init: str = "stack", depth_placement: str = "top",
                    seed: int = 0, ramp_steps: int = 1000, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                    log: Callable[[str], None] = print, progress_interval: float = 5.0) -> str:
    """Grow the checkpoint at `load` into a new checkpoint root `save`; returns its iteration folder.

    `overrides`: the new sizes (num_layers, hidden_size, num_attention_heads, ffn_hidden_size; None
    keeps the old). Raises GrowCheckpointError / GrowthError / ConfigError naming the path or field.
    """
    save = os.path.normpath(save)
    if os.path.lexists(save):
        raise GrowCheckpointError(f"--save {save} already exists; choose a new path (nothing was written)")
    folder, iteration = _resolve_input(load)
    common = torch.load(os.path.join(folder, "common.pt"), map_location="cpu", weights_only=False)
    old = old_config(common, f"--load {load}")
    previous = common.get("flm", {}).get("growth")
    if previous:
        state = GrowthState.from_dict(previous)
        if state.lambda_at(iteration) < 1.0:
            raise GrowCheckpointError(f"--load {load}: iteration {iteration} is still inside the previous growth's "
                                      f"mask ramp (started at {state.start_iteration}, {state.ramp_steps} steps); "
                                      f"train past it before growing again")
    new = dataclasses.replace(old, **{k: v for k, v in overrides.items() if v is not None})
    plan = GrowthPlan(old, new, depth_init=depth_init, depth_placement=depth_placement, seed=seed)
    if ramp_steps < 0:
        raise GrowCheckpointError(f"--growth-ramp-steps {ramp_steps} must be >= 0")
    reader = CheckpointReader(folder)
    chunks = plan_chunks(reader, plan)
    total = sum(c.nbytes for c in chunks)
    largest = max((c.nbytes for c in chunks), default=0)
    log(f"grow: {folder} (iteration {iteration}) -> {save}\n"
        f"grow: {old.num_layers} x {old.hidden_size}, {old.num_attention_heads} heads, FFN {old.ffn_hidden_size} -> "
        f"{new.num_layers} x {new.hidden_size}, {new.num_attention_heads} heads, FFN {new.ffn_hidden_size} "
        f"(depth {depth_init}/{depth_placement}, seed {seed}, ramp {ramp_steps} steps)\n"
        f"grow: {len(chunks)} chunks, {total / 2 ** 30:.2f} GiB to write, largest chunk {largest / 2 ** 20:.1f} MiB")

    partial = save + ".partial"
    if os.path.lexists(partial):
        log(f"grow: removing {partial} left by an interrupted run")
        shutil.rmtree(partial)
    out_dir = iteration_dir(partial, iteration)
    os.makedirs(out_dir)
    try:
        progress = Progress(len(chunks), total, log, progress_interval)
        write_chunks(out_dir, chunks, _grower(reader, plan), bucket_bytes=bucket_bytes, progress=progress)
        torch.save(grown_common(common, plan, ramp_steps, iteration, load), os.path.join(out_dir, "common.pt"))
        shutil.copyfile(os.path.join(folder, "metadata.json"), os.path.join(out_dir, "metadata.json"))
        with open(os.path.join(partial, LATEST), "w") as f:
            f.write(str(iteration))
        _fsync_tree(partial)
        os.rename(partial, save)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log(f"grow: wrote {save} ({total / 2 ** 30:.2f} GiB in {time.time() - progress.start:.1f}s)")
    return iteration_dir(save, iteration)


def verify_growth(old_path: str, new_path: str, *, batch: int = 2, seq_length: int | None = None, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> float:
    """Max abs difference of the logits of the old model and the grown one (masks at lambda 0).

    Both models are built whole at TP=PP=1 on this machine and loaded with the trainer's own
    loader (megatron's dist_checkpointing), then run in `dtype`: float64 by default, so the number
    measures the growth and not rounding (in fp32 a wider hidden size alone sums in another order:
    ~1e-6 to 1e-5 on trained tiny models, while an exact growth gives ~1e-14 in float64). It needs
    memory for both models: meant for small and medium models and for tests, not for 101B on a
    login node. The probe is random tokens from a fixed seed. Needs megatron's parallel state
    (TP=PP=1; see `init_single_process`).
    """
    from flm_ext.growth.masks import attach_growth
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.training.checkpointing import load_checkpoint, load_common

    models, configs = [], []
    for path in (old_path, new_path):
        cfg = old_config(load_common(path), path)
        [model] = build_model_chunks(cfg)
        common = load_checkpoint(path, [model], None, None, load_optimizer=False)
        model.to(dtype).eval()
        models.append(model)
        configs.append((cfg, common))
    (old_cfg, _), (new_cfg, new_common) = configs
    growth = new_common.get("flm", {}).get("growth")
    if not growth:
        raise GrowCheckpointError(f"{new_path}: no flm.growth record; not a grown checkpoint")
    attach_growth([models[1]], GrowthState.from_dict(growth), 0.0)
    seq = seq_length or min(old_cfg.seq_length, 256)
    ids = torch.randint(0, old_cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(seq).expand_as(ids)
    with torch.no_grad():
        before = models[0](ids, positions, None)
        after = models[1](ids, positions, None)
    return float((before.double() - after.double()).abs().max())


def init_single_process(seed: int = 1234) -> None:
    """A world-size-1 gloo group and megatron TP=PP=1 state (for `verify_growth`), on a free port."""
    import socket

    from flm_ext.config import ParallelConfig
    from flm_ext.runtime import initialize_distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    initialize_distributed(ParallelConfig(), seed=seed, rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")


def write_synthetic_checkpoint(root: str, cfg: FLMConfig, *, iteration: int = 100, optimizer: bool = True,
                               dtype: torch.dtype = torch.float32, seed: int = 0,
                               bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
    """A checkpoint of `cfg` with random weights in the trainer's layout, written tensor by tensor, so
    benchmarks and tests can make big inputs in little memory: weights in `dtype`, fp32 Adam moments
    and, for a low-precision `dtype`, the fp32 main weights (`fp32_param`, equal to the weights up to
    rounding, as in bf16 training). It lacks the trainer's per-layer `_extra_state` objects and
    optimizer hyper-parameters: input for this tool, not for `pretrain_flm.py`."""
    plan = GrowthPlan(cfg, cfg)
    keys = [k for k in _TENSOR_KEYS if k != "output_layer.weight" or not cfg.share_embeddings_and_output_weights]
    states = (("exp_avg", "exp_avg_sq") + (("fp32_param",) if dtype != torch.float32 else ())) if optimizer else ()
    chunks = []
    for model_key in keys:
        _, shape = plan.shapes(model_key)
        for key, kind in [(model_key, dtype)] + [(f"optimizer.state.{n}.{model_key}", torch.float32) for n in states]:
            role = _split_key(key)[1]
            if is_layer_key(model_key):
                size = (cfg.num_layers,) + shape
                chunks += [_Chunk(key, model_key, role, j, (j,) + (0,) * len(shape), (1,) + shape, size, kind)
                           for j in range(cfg.num_layers)]
            else:
                chunks.append(_Chunk(key, model_key, role, None, (0,) * len(shape), shape, shape, kind))

    def produce(c: _Chunk):
        name = c.model_key if c.role == "param" else c.key  # a weight and its fp32 main copy share values
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}/{c.layer}".encode()))
        out = torch.randn(c.sizes, generator=g, dtype=torch.float32).mul_(0.02)
        return (out.abs_() if c.role == "exp_avg_sq" else out).to(c.dtype)

    folder = iteration_dir(root, iteration)
    os.makedirs(folder)
    write_chunks(folder, chunks, produce, bucket_bytes=bucket_bytes)
    common = {"iteration": iteration, "consumed_train_samples": 0, "parallel_layout": [1, 1],
              "flm": {"model_config": asdict(cfg)}}
    torch.save(common, os.path.join(folder, "common.pt"))
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                   "common_backend_version": 1}, f)
    with open(os.path.join(root, LATEST), "w") as f:
        f.write(str(iteration))


def _fsync_tree(root: str) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


__all__ = ["grow_checkpoint", "verify_growth", "write_synthetic_checkpoint", "write_chunks", "init_single_process", "CheckpointReader", "GrowCheckpointError",
           "plan_chunks", "grown_common", "Progress"]
