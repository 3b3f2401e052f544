"""Grow a saved torch_dist training checkpoint offline, tensor by tensor (FLM's 16B -> 51B -> 101B
steps).

`grow_checkpoint(load, save, overrides)` reads a checkpoint the trainer wrote (any TP/PP, verified,
through `flm_ext.checkpoint`) and writes one the trainer loads at any TP/PP, with the model, Adam
moments and fp32 main weights grown by `operators.py` and the growth record (`flm.growth`) the
trainer's growth hook turns into masks. The output is planned from shapes alone (`plan_chunks`) and
written chunk by chunk with `flm_ext.checkpoint.write_chunks`, each chunk grown from the old slices
it needs, so the largest thing in memory is one layer of one tensor (or the embedding) plus one
output bucket, not the model.

The result is built in `<save>.partial/` and renamed to `<save>` only when complete (with a
manifest), so an interrupted growth leaves nothing at `<save>`.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from dataclasses import asdict
from typing import Callable


from flm_ext.checkpoint import (DEFAULT_BUCKET_BYTES, CheckpointError, CheckpointReader, CheckpointRecord, Chunk,
                                finish_iteration_folder, iteration_dir, open_checkpoint, write_chunks, write_latest)
from flm_ext.checkpoint.writer import keep_freed_memory
from flm_ext.fileio import building
from flm_ext.growth.state import GrowthState
from flm_ext.growth.methods import GrowthMethod, get_method
from flm_ext.growth.operators import GrowthError, GrowthPlan, is_growable, is_layer_key
from flm_ext.progress import Progress

_OPTIMIZER_PREFIX = re.compile(r"^optimizer\.state\.(exp_avg_sq|exp_avg|fp32_param|param)\.(.+)$")
_OBJECT_KEY = re.compile(r"^(.+)/shard_([0-9.]+)_([0-9.]+)$")
_ROLE = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "fp32_param": "param", "param": "param"}


class GrowCheckpointError(ValueError):
    """The growth cannot be done (bad input checkpoint, output path, or shapes); names the path or flag."""


# --- what the grown checkpoint holds --------------------------------------------------------------

def _split_key(key: str) -> tuple[str, str]:
    """Checkpoint key -> (FLM model key, growth role)."""
    match = _OPTIMIZER_PREFIX.match(key)
    if match:
        return match.group(2), _ROLE[match.group(1)]
    return key, "param"


def plan_chunks(reader: CheckpointReader, plan: GrowthPlan) -> list[Chunk]:
    """Every chunk of the grown checkpoint, checking the old tensors against the old config first."""
    chunks: list[Chunk] = []
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
                chunks.append(Chunk(key, model_key, role, j, (j,) + (0,) * len(new_shape), (1,) + new_shape, size,
                                     dtype))
        else:
            chunks.append(Chunk(key, model_key, role, None, (0,) * len(new_shape), new_shape, new_shape, dtype))
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
                chunks.append(Chunk(f"{base}/shard_{j}_{new_layers}", None, None, j, (), (), (), None, source))
        else:
            chunks.append(Chunk(key, None, None, None, (), (), (), None, key))
    return chunks


def _grower(reader: CheckpointReader, plan: GrowthPlan, method: GrowthMethod) -> Callable[[Chunk], object]:
    """Grows one output chunk from the old checkpoint's slices it needs."""
    def produce(c: Chunk):
        if c.dtype is None:
            return io.BytesIO(reader.read_bytes(c.source_object))
        if c.layer is None:
            return method.grow_width(c.model_key, reader.read(c.key), plan, c.role).contiguous()
        grown = method.grow_layer(c.model_key, lambda i: reader.read_layer(c.key, i), plan, c.layer, c.role,
                                  dtype=c.dtype)
        return grown.unsqueeze(0).contiguous()
    return produce


def _describe(method: GrowthMethod, plan: GrowthPlan, ramp_steps: int) -> str:
    if method.uses_masks:
        return f"{method.name}, depth {plan.depth_init}/{plan.depth_placement}, ramp {ramp_steps} steps"
    knobs = ", ".join(f"{k} {v}" for k, v in method.settings.items() if v is not None)
    return method.name + (f", {knobs}" if knobs else "") + ", no masks"


# --- the whole operation -------------------------------------------------------------------------

def _open_input(load: str):
    """The input checkpoint, or a GrowCheckpointError naming --load. Its shards' checksums are
    checked by `_verify_shards` while the output is written (the output is renamed into place
    only after that check)."""
    try:
        return open_checkpoint(load, defer_shards=True)
    except CheckpointError as e:
        raise GrowCheckpointError(f"--load {load}: {e}") from None


def _verify_shards(ckpt, load: str) -> None:
    try:
        ckpt.verify_shards()
    except CheckpointError as e:
        raise GrowCheckpointError(f"--load {load}: {e}") from None


def _check_backend(folder: str, load: str) -> None:
    with open(os.path.join(folder, "metadata.json")) as f:
        backend = json.load(f).get("sharded_backend")
    if backend != "torch_dist":
        raise GrowCheckpointError(f"--load {load}: sharded backend {backend!r} is not torch_dist")


def grown_record(record: CheckpointRecord, plan: GrowthPlan, ramp_steps: int, iteration: int, source: str,
                 method: GrowthMethod | None = None) -> CheckpointRecord:
    """The new checkpoint's record: the old one's training position, optimizer hyper-parameters and
    LR schedule, the new config, the growth provenance (`grown_from`: method and knobs; the MSG
    mask record `growth` only for a method with masks); no parallel layout (so no RNG restore)."""
    method = method or get_method("msg", depth_init=plan.depth_init, depth_placement=plan.depth_placement)
    growth = None
    if method.uses_masks:
        growth = GrowthState.from_plan(plan, ramp_steps, start_iteration=iteration, method=method.name,
                                       knobs=method.settings).to_dict()
    grown_from = {"path": os.path.abspath(source), "model_config": asdict(plan.old), "depth_init": plan.depth_init,
                  "depth_placement": plan.depth_placement, "seed": plan.seed, **method.record()}
    return record.replace(iteration=iteration, parallel_layout=None, model_config=plan.new, growth=growth,
                          grown_from=grown_from)


def _growth_plan(ckpt, overrides: dict, load: str, method: GrowthMethod, seed: int) -> GrowthPlan:
    try:
        state = GrowthState.of_checkpoint(ckpt)
    except GrowthError as e:
        raise GrowCheckpointError(f"--load {load}: {e}") from None
    if state is not None:
        if state.lambda_at(ckpt.iteration) < 1.0:
            raise GrowCheckpointError(f"--load {load}: iteration {ckpt.iteration} is still inside the previous "
                                      f"growth's mask ramp (started at {state.start_iteration}, {state.ramp_steps} "
                                      f"steps); train past it before growing again")
    sizes = method.new_sizes(ckpt.config, overrides)
    new = dataclasses.replace(ckpt.config, **{k: v for k, v in sizes.items() if v is not None})
    return method.plan(ckpt.config, new, seed=seed)


def grow_checkpoint(load: str, save: str, overrides: dict, *, depth_init: str = "stack", depth_placement: str = "top",
                    seed: int = 0, ramp_steps: int = 1000, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                    log: Callable[[str], None] = print, progress_interval: float = 5.0,
                    check: Callable[[str], None] | None = None, method: GrowthMethod | None = None,
                    workers: int = 1) -> str:
    """Grow the checkpoint at `load` into a new checkpoint root `save`; returns its iteration folder.

    `check` (e.g. --verify) runs on the finished `<save>.partial` root before it is renamed to
    `save`: if it raises, the partial folder is removed, so a grown checkpoint that failed its
    check never looks complete (nor stays where a later run could load it).
    `overrides`: the new sizes (num_layers, hidden_size, num_attention_heads, ffn_hidden_size; None
    keeps the old). `method`: the operator (flm_ext.growth.methods; default MSG with `depth_init` and
    `depth_placement`). `workers`: processes writing the output's files in parallel (the same bytes).
    Raises GrowCheckpointError / GrowthError / ConfigError naming the path or field.
    """
    if method is None:
        method = get_method("msg", depth_init=depth_init, depth_placement=depth_placement)
    save = os.path.normpath(save)
    if os.path.lexists(save):
        raise GrowCheckpointError(f"--save {save} already exists; choose a new path (nothing was written)")
    if ramp_steps < 0:
        raise GrowCheckpointError(f"--growth-ramp-steps {ramp_steps} must be >= 0")
    if workers < 1:
        raise GrowCheckpointError(f"--workers {workers} must be >= 1")
    keep_freed_memory()  # every chunk reuses the last one's pages (writer.py)
    ckpt = _open_input(load)
    _check_backend(ckpt.folder, load)
    plan = _growth_plan(ckpt, overrides, load, method, seed)
    old, new, iteration = plan.old, plan.new, ckpt.iteration
    chunks = plan_chunks(ckpt.reader, plan)
    total = sum(c.nbytes for c in chunks)
    largest = max((c.nbytes for c in chunks), default=0)
    log(f"grow: {ckpt.folder} (iteration {iteration}) -> {save}\n"
        f"grow: {old.num_layers} x {old.hidden_size}, {old.num_attention_heads} heads, FFN {old.ffn_hidden_size} -> "
        f"{new.num_layers} x {new.hidden_size}, {new.num_attention_heads} heads, FFN {new.ffn_hidden_size} "
        f"({_describe(method, plan, ramp_steps)}, seed {seed})\n"
        f"grow: {len(chunks)} chunks, {total / 2 ** 30:.2f} GiB to write, largest chunk {largest / 2 ** 20:.1f} MiB")
    if os.path.lexists(save + ".partial"):
        log(f"grow: removing {save}.partial left by an interrupted run")
    progress = Progress(total, "grow", unit="B", interval=progress_interval, emit=log)
    done = iter(range(1, len(chunks) + 1))

    def on_chunk(c: Chunk) -> None:
        where = c.key + (f" [layer {c.layer}]" if c.layer is not None else "")
        progress.update(c.nbytes, f"chunk {next(done)}/{len(chunks)} {where}")

    with building(save) as partial:
        out_dir = iteration_dir(partial, iteration)
        os.makedirs(out_dir)
        checksums = write_chunks(out_dir, chunks, _grower(ckpt.reader, plan, method), bucket_bytes=bucket_bytes,
                                 on_chunk=on_chunk, workers=workers, sync_files=False,  # building() fsyncs the tree
                                 prefetch=True, beside=lambda: _verify_shards(ckpt, load))
        finish_iteration_folder(out_dir, grown_record(ckpt.record, plan, ramp_steps, iteration, load, method),
                                checksums)
        write_latest(partial, iteration)
        if check is not None:
            check(partial)
    log(f"grow: wrote {save} ({total / 2 ** 30:.2f} GiB in {progress.elapsed:.1f}s)")
    return iteration_dir(save, iteration)


__all__ = ["grow_checkpoint", "GrowCheckpointError", "plan_chunks", "grown_record"]
