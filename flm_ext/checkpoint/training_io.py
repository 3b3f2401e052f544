"""The trainer's checkpoints: save and load a live model on every rank with megatron-core's
dist_checkpointing (torch_dist), in the layout and with the guarantees of `flm_ext.checkpoint`.

A save writes `iter_N.partial/`, each rank hashes the files it wrote into the manifest, and only
after every rank has finished is the folder renamed to `iter_N/` and the latest marker replaced
(atomically). A crash, SIGKILL or write error (disk full) during a save therefore leaves the
previous checkpoint as the latest, complete one; the partial folder is removed. Weights that are
not finite are never saved. A load verifies the folder first (the ranks share the checksum work)
and never unpickles anything but plain data.

Contents: the model (megatron's sharded state dict: loads at any TP/PP), the optimizer
(`fully_reshardable` for the distributed optimizer, so it also reshards), the LR scheduler,
per-rank RNG states (restored when the layout is unchanged), and the `CheckpointRecord`
(schema.py: iteration, data position, model config, optimizer kind, anything the training hooks
record, e.g. a growth ramp) that tools read without building a model.
"""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from flm_ext.checkpoint import (CheckpointError, CheckpointReader, iteration_dir, iterations_present, resolve,
                                verify_checkpoint, write_latest)
from flm_ext.checkpoint.integrity import describe_files, load_common, write_manifest
from flm_ext.checkpoint.model_state import apply_model_state, load_sharded, model_sharded_state
from flm_ext.checkpoint.schema import CheckpointRecord
from flm_ext.model.flm_model import unwrap

OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def has_optimizer_state(folder: str) -> bool:
    """Whether a checkpoint folder holds Adam moments (an optimizer saved before any step has none)."""
    return any(key.startswith("optimizer.") for key in CheckpointReader(folder).tensors)


def _collect_errors(error: BaseException | None) -> str | None:
    """The first rank's error message, on every rank (so all ranks stop together)."""
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else str(error))
    return next((m for m in messages if m is not None), None)


def _rng_state() -> ShardedObject:
    state = {"random": random.getstate(), "np": np.random.get_state(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    pp, tp = parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank()
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    return ShardedObject("rng_state", [state], (pp_size, tp_size), (pp, tp),
                         replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True))


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(chunks, optimizer, scheduler, *, is_loading: bool, extra: dict | None = None,
                   with_rng: bool = True) -> dict:
    state = model_sharded_state(chunks)
    if optimizer is not None:
        model_sd = {}
        for value in state.values():
            model_sd.update(value)
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                          metadata=OPTIMIZER_METADATA)
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    if with_rng:
        state["rng_state"] = _rng_state()
    state.update(extra or {})
    return state


def weights_finite(chunks) -> bool:
    """True when every parameter on every rank is finite (checked before a save)."""
    finite = all(bool(torch.isfinite(p).all()) for c in chunks for p in unwrap(c).parameters())
    flag = torch.tensor([0 if finite else 1], dtype=torch.int32, device=next(unwrap(chunks[0]).parameters()).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return not bool(flag.item())


def save_checkpoint(root: str, iteration: int, chunks, optimizer, scheduler, *, record: CheckpointRecord,
                    keep: int | None = None, sharded_strategy=None, discard_newer: bool = False) -> str:
    """Save a complete checkpoint for `iteration` and make it the latest; returns its folder.

    `record`: what common.pt stores (`trainer_record`); its iteration must be `iteration`.

    `discard_newer`: remove the iterations newer than this one once it is complete (a run resumed
    from an older iteration that was told to replace them). Otherwise they are never touched.

    Raises CheckpointError (on every rank) when the save fails, e.g. disk full: the partial folder
    is removed and the previous checkpoint stays the latest. `sharded_strategy`: megatron's save
    strategy (default torch_dist; flm_ext.training.async_save wraps it for fully parallel saves).
    """
    state = sharded_save_state(iteration, chunks, optimizer, scheduler, record)
    final, partial = begin_save(root, iteration)
    error = files = None
    try:
        dist_checkpointing.save(state, partial, validate_access_integrity=True, sharded_strategy=sharded_strategy)
        files = describe_own_files(partial)  # right after writing, by the rank that wrote them
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - any write error, on every rank below
        error = save_error(partial, e)
    publish_save(root, iteration, files, error, keep, discard_newer=discard_newer)
    return final


def sharded_save_state(iteration: int, chunks, optimizer, scheduler, record: CheckpointRecord) -> dict:
    """What megatron's save writes: the sharded model/optimizer/RNG state and the record (common.pt)."""
    if record.iteration != iteration:
        raise ValueError(f"saving iteration {iteration} with the record of iteration {record.iteration}")
    return _sharded_state(chunks, optimizer, scheduler, is_loading=False, extra=record.to_dict())


def begin_save(root: str, iteration: int) -> tuple[str, str]:
    """(final folder, fresh partial folder) of a save; every rank returns once rank 0 made the folder."""
    final = iteration_dir(root, iteration)
    partial = final + ".partial"
    if dist.get_rank() == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
    dist.barrier()
    return final, partial


def describe_own_files(partial: str, rank: int | None = None) -> dict:
    """Sizes and checksums of the files this rank wrote into `partial` (rank 0 also owns the shared ones)."""
    rank = dist.get_rank() if rank is None else rank
    mine = [n for n in os.listdir(partial) if n.startswith(f"__{rank}_")]
    if rank == 0:
        mine += [n for n in (".metadata", "common.pt", "metadata.json") if os.path.exists(os.path.join(partial, n))]
    return describe_files(partial, mine)


def publish_save(root: str, iteration: int, files: dict | None, error: BaseException | None,
                 keep: int | None, *, discard_newer: bool = False) -> None:
    """The end of a save on every rank: on any rank's error remove the partial folder and raise
    CheckpointError everywhere; otherwise write the manifest of every rank's files, rename the folder
    and make it the latest (rank 0), then prune."""
    final = iteration_dir(root, iteration)
    partial = final + ".partial"
    rank = dist.get_rank()
    message = _collect_errors(error)
    if message is not None:
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        dist.barrier()
        raise CheckpointError(f"saving {final} failed: {message}; the partial folder was removed and "
                              f"{_latest_text(root)} stays the latest checkpoint")
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, files)
    if rank == 0:
        write_manifest(partial, {k: v for part in gathered for k, v in part.items()})
        if os.path.exists(final):  # re-saving the same iteration (e.g. at exit right after a periodic save)
            shutil.rmtree(final)
        os.replace(partial, final)
        write_latest(root, iteration)
        if discard_newer:
            for newer in iterations_present(root):
                if newer > iteration:
                    shutil.rmtree(iteration_dir(root, newer), ignore_errors=True)
        _prune(root, keep, iteration)
    dist.barrier()


def save_error(partial: str, error: BaseException) -> OSError:
    """A failed write as one line, with the OS condition behind it when there is one."""
    return OSError(f"{_write_diagnosis(partial)}{_first_line(error)}")


def _first_line(error: BaseException) -> str:
    """The innermost useful line of a (possibly wrapped) save error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def _write_diagnosis(folder: str) -> str:
    """Name the OS condition behind a failed write: torch's writers report them as opaque errors."""
    import resource

    free = shutil.disk_usage(folder if os.path.exists(folder) else os.path.dirname(folder)).free
    if free < 64 * 2 ** 20:
        return f"disk full ({free:,} bytes free on the device of {folder}): "
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f"file too large (OSError EFBIG: the file size limit, ulimit -f, is {soft:,} bytes): "
    return ""


def _latest_text(root: str) -> str:
    try:
        _, latest = resolve(root)
        return f"iteration {latest}"
    except CheckpointError:
        return "no checkpoint"


def _prune(root: str, keep: int | None, latest: int) -> None:
    """Remove leftover partial saves and all but the newest `keep` complete checkpoints."""
    for name in os.listdir(root):
        if name.endswith(".partial"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if not keep:
        return
    for old in iterations_present(root)[:-keep]:
        if old != latest:
            shutil.rmtree(iteration_dir(root, old), ignore_errors=True)


def verify_for_load(folder: str, *, checksums: bool = True) -> None:
    """Every rank verifies its share of `folder` (checksums, safe unpickling) before megatron reads it."""
    error = None
    try:
        verify_checkpoint(folder, part=dist.get_rank(), parts=dist.get_world_size(), checksums=checksums)
    except CheckpointError as e:
        error = e
    message = _collect_errors(error)
    if message is not None:
        raise CheckpointError(message)


def _check_optimizer_kind(record: CheckpointRecord, optimizer, folder: str) -> None:
    saved = record.distributed_optimizer
    current = _is_distributed(optimizer)
    if saved is not None and saved != current:
        flag = "with" if saved else "without"
        raise CheckpointError(f"{folder} was saved {flag} --use-distributed-optimizer: resume {flag} it, or add "
                              f"--no-load-optim to start Adam's moments from zero (the LR schedule continues)")


def _is_distributed(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return any(isinstance(o, DistributedOptimizer) for o in getattr(optimizer, "chained_optimizers", [optimizer]))


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What `load_checkpoint` loaded: the checkpoint's record, and whether Adam's state and the LR
    schedule were restored."""

    folder: str
    record: CheckpointRecord
    loaded_optimizer: bool
    loaded_scheduler: bool


def load_checkpoint(path: str, chunks, optimizer, scheduler, *, iteration: int | None = None,
                    load_optimizer: bool = True, load_scheduler: bool = True, verify: bool = True
                    ) -> LoadedCheckpoint:
    """Load weights (and optimizer, scheduler, RNG when present and applicable) into a built model.

    The scheduler is restored even without the optimizer (the LR schedule keeps its position); RNG
    states only if the checkpoint was written with the same TP x PP layout.
    """
    folder, iteration = resolve(path, iteration)
    verify_for_load(folder, checksums=verify)
    common = load_common(folder)  # read once: the record, and megatron's common state below
    record = CheckpointRecord.from_dict(common, os.path.join(folder, "common.pt")).replace(iteration=iteration)
    rank0 = dist.get_rank() == 0
    if load_optimizer and optimizer is not None and not has_optimizer_state(folder):
        if rank0:
            print(f"{folder} has no optimizer state (saved before the first step, or written by a tool): "
                  f"Adam's moments start from zero", flush=True)
        load_optimizer = False
    if load_optimizer and optimizer is not None:
        _check_optimizer_kind(record, optimizer, folder)
    same_layout = record.parallel_layout == _layout()
    load_scheduler = load_scheduler and scheduler is not None and record.scheduler_state is not None
    if load_optimizer and optimizer is not None:
        patch_distributed_optimizer_step_load()
        materialize_adam_state(optimizer)
        configured = [_group_hyperparameters(g) for g in optimizer.param_groups]
    state = _sharded_state(chunks, optimizer if load_optimizer else None, None, is_loading=True, with_rng=same_layout)
    loaded = load_sharded(state, folder, common)
    apply_model_state(chunks, loaded)
    if load_optimizer and optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
        untie_adam_steps(optimizer)
        # The flags, not the checkpoint, set each group's LR range and decay (a new stage's --lr).
        for group, values in zip(optimizer.param_groups, configured):
            group.update(values)
    if load_scheduler:
        scheduler.load_state_dict(record.scheduler_state)
    if same_layout and "rng_state" in loaded:
        rng = loaded["rng_state"]
        _set_rng_state(rng[0] if isinstance(rng, list) else rng)
    return LoadedCheckpoint(folder, record, bool(load_optimizer and optimizer is not None), load_scheduler)


_GROUP_HYPERPARAMETERS = ("max_lr", "min_lr", "wd_mult", "lr_mult")


def _group_hyperparameters(group: dict) -> dict:
    return {k: group[k] for k in _GROUP_HYPERPARAMETERS if k in group}


def materialize_adam_state(optimizer) -> None:
    """Create Adam's state (zero moments, step 0) where torch's Adam has none yet.

    torch's Adam (megatron's fallback without apex/TE, always on CPU) creates its state lazily
    at the first step, but megatron's distributed optimizer builds its loading state dict from the
    current state and asserts one shared `step`: resuming before any step would fail. The values
    are overwritten by the load.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        torch_opt = getattr(opt, "optimizer", None)
        if not isinstance(torch_opt, torch.optim.Optimizer):
            continue
        for group in torch_opt.param_groups:
            for param in group["params"]:
                state = torch_opt.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def patch_distributed_optimizer_step_load() -> bool:
    """Let megatron-core 0.16's distributed optimizer load `fully_reshardable` state into torch's Adam.

    Without apex/TE (always on CPU, and on GPU images without them) megatron first gives every
    parameter's Adam state the checkpoint's shared `step`, then copies the saved tensors into
    each state by the state's keys; the saved tensors have no `step`, so loading fails with
    KeyError: 'step'. The patch hides `step` during that copy and puts it back. Applied once, only
    when megatron uses torch's Adam; returns whether it is in place.
    """
    from megatron.core.optimizer import distrib_optimizer as dopt

    if getattr(dopt, "HAVE_APEX_OR_TE", True):
        return False
    cls = dopt.DistributedOptimizer
    if getattr(cls._set_main_param_and_optimizer_states, "_flm_patched", False):
        return True
    original = cls._set_main_param_and_optimizer_states

    def set_states_without_step(self, model_param, tensors):
        if "step" in tensors or self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
        step = state.pop("step", None)
        try:
            return original(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step

    set_states_without_step._flm_patched = True
    cls._set_main_param_and_optimizer_states = set_states_without_step
    return True


def untie_adam_steps(optimizer) -> int:
    """Give every parameter its own Adam `step` tensor after a load; returns how many were fixed.

    megatron-core saves one shared `step` for all parameters and, on load with torch's Adam (the
    fallback without apex/TE, always on CPU), can hand the same tensor object to every
    parameter. torch's Adam increments `step` in place once per parameter, so a shared tensor
    advances N times per iteration and the resumed run silently diverges.
    """
    fixed = 0
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    for opt in inner:
        torch_opt = getattr(opt, "optimizer", None)
        if torch_opt is None:
            continue
        seen: set[int] = set()
        for state in torch_opt.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                if id(step) in seen:
                    state["step"] = step.clone()
                    fixed += 1
                seen.add(id(state["step"]))
    return fixed


def _layout() -> tuple[int, int]:
    return (parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size())


def trainer_record(iteration: int, model_config, consumed_train_samples: int, optimizer=None,
                   **fields) -> CheckpointRecord:
    """The record of a training checkpoint: data position, this run's TP x PP layout, the model
    config, the optimizer kind, and `fields` (tokenizer, run contract, what the hooks record...)."""
    return CheckpointRecord(iteration=iteration, model_config=model_config,
                            consumed_train_samples=consumed_train_samples, parallel_layout=_layout(),
                            distributed_optimizer=None if optimizer is None else _is_distributed(optimizer),
                            **fields)
