"""Training checkpoints with megatron-core's dist_checkpointing (torch_dist format).

Layout (Megatron-LM's, so its users and tools recognise it):

    <dir>/iter_0000200/                 one complete checkpoint (torch_dist: metadata + shards)
    <dir>/latest_checkpointed_iteration.txt

A checkpoint is written to `iter_N.partial/`, renamed to `iter_N/` only after every rank has
finished, and only then is the "latest" marker replaced (atomically). A crash or SIGKILL during a
save therefore leaves the previous checkpoint as the latest, complete one; leftover `.partial`
folders are ignored and removed by the next save. The last `keep` checkpoints are kept.

Contents: the model (megatron's sharded state dict: loads at any TP/PP), the optimizer
(`fully_reshardable` for the distributed optimizer, so it also reshards), the LR scheduler,
per-rank RNG states (restored when the layout is unchanged), the iteration and data position,
and an `flm` dict (model config and any growth state) that tools read without building a model.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy

LATEST = "latest_checkpointed_iteration.txt"
_ITER_DIR = re.compile(r"^iter_(\d{7})$")
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unusable; the message names the path."""


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def read_latest(root: str) -> int | None:
    """The iteration of the latest complete checkpoint under `root`, or None if there is none."""
    marker = os.path.join(root, LATEST)
    if not os.path.exists(marker):
        return None
    text = open(marker).read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{marker}: expected an iteration number, found {text!r}")
    iteration = int(text)
    if not os.path.isdir(iteration_dir(root, iteration)):
        raise CheckpointError(f"{marker} names iteration {iteration} but {iteration_dir(root, iteration)} is missing")
    return iteration


def resolve(path: str) -> tuple[str, int]:
    """(checkpoint folder, iteration) for a root with a latest marker or an `iter_N` folder itself."""
    name = os.path.basename(os.path.normpath(path))
    match = _ITER_DIR.match(name)
    if match:
        if not os.path.exists(os.path.join(path, "metadata.json")):
            raise CheckpointError(f"{path} is not a complete torch_dist checkpoint (no metadata.json)")
        return path, int(match.group(1))
    iteration = read_latest(path)
    if iteration is None:
        raise CheckpointError(f"{path} holds no complete checkpoint (no {LATEST})")
    return iteration_dir(path, iteration), iteration


def has_checkpoint(path: str) -> bool:
    """True if `path` is a complete checkpoint folder or a root with a latest marker."""
    try:
        resolve(path)
    except CheckpointError:
        return False
    return True


def has_optimizer_state(folder: str) -> bool:
    """Whether a checkpoint folder holds Adam moments (an optimizer saved before any step has none)."""
    metadata = dist_checkpointing.load_tensors_metadata(folder)
    return any(key.startswith("optimizer.") for key in metadata)


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


def _model_state(chunks) -> dict:
    modules = [c.module if hasattr(c, "module") else c for c in chunks]
    if len(modules) == 1:
        return {"model": modules[0].sharded_state_dict()}
    return {f"model{i}": m.sharded_state_dict() for i, m in enumerate(modules)}


def _sharded_state(chunks, optimizer, scheduler, *, is_loading: bool, extra: dict | None = None,
                   with_rng: bool = True) -> dict:
    state = _model_state(chunks)
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


def save_checkpoint(root: str, iteration: int, chunks, optimizer, scheduler, *, extra: dict, keep: int | None = None
                    ) -> str:
    """Save a complete checkpoint for `iteration` and make it the latest; returns its folder."""
    final = iteration_dir(root, iteration)
    partial = final + ".partial"
    rank0 = dist.get_rank() == 0
    if rank0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
    dist.barrier()
    state = _sharded_state(chunks, optimizer, scheduler, is_loading=False, extra={"iteration": iteration, **extra})
    dist_checkpointing.save(state, partial, validate_access_integrity=True)
    dist.barrier()
    if rank0:
        if os.path.exists(final):  # re-saving the same iteration (e.g. at exit right after a periodic save)
            shutil.rmtree(final)
        os.replace(partial, final)
        _write_latest(root, iteration)
        _prune(root, keep, iteration)
    dist.barrier()
    return final


def _write_latest(root: str, iteration: int) -> None:
    tmp = os.path.join(root, LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(root, LATEST))


def _prune(root: str, keep: int | None, latest: int) -> None:
    """Remove leftover partial saves and all but the newest `keep` complete checkpoints."""
    for name in os.listdir(root):
        if name.endswith(".partial"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if not keep:
        return
    iterations = sorted(int(m.group(1)) for m in map(_ITER_DIR.match, os.listdir(root)) if m)
    for old in iterations[:-keep]:
        if old != latest:
            shutil.rmtree(iteration_dir(root, old), ignore_errors=True)


def load_common(path: str) -> dict:
    """The non-tensor part (iteration, flm config, data position, scheduler) without a model."""
    folder, _ = resolve(path)
    return dist_checkpointing.load_common_state_dict(folder)


def load_checkpoint(path: str, chunks, optimizer, scheduler, *, load_optimizer: bool = True,
                    load_scheduler: bool = True) -> dict:
    """Load weights (and optimizer, scheduler, RNG when present and applicable) into a built model.

    Returns the checkpoint's common state (iteration, data position, flm dict, ...). RNG states
    are restored only if the checkpoint was written with the same TP x PP layout.
    """
    folder, iteration = resolve(path)
    common = dist_checkpointing.load_common_state_dict(folder)
    if load_optimizer and optimizer is not None and not has_optimizer_state(folder):
        if dist.get_rank() == 0:
            print(f"{folder} has no optimizer state (saved before the first step, or written by a tool): "
                  f"the optimizer and LR schedule start fresh", flush=True)
        load_optimizer = False
    saved_layout = common.get("parallel_layout")
    same_layout = saved_layout == _layout()
    load_scheduler = load_scheduler and load_optimizer and "opt_param_scheduler" in common
    if load_optimizer and optimizer is not None:
        patch_distributed_optimizer_step_load()
        materialize_adam_state(optimizer)
        configured = [_group_hyperparameters(g) for g in optimizer.param_groups]
    state = _sharded_state(chunks, optimizer if load_optimizer else None, scheduler if load_scheduler else None,
                           is_loading=True, with_rng=same_layout)
    strategy = get_default_load_sharded_strategy(folder)
    loaded = dist_checkpointing.load(state, folder, sharded_strategy=strategy)
    modules = [c.module if hasattr(c, "module") else c for c in chunks]
    if len(modules) == 1:
        modules[0].load_state_dict(loaded["model"], strict=True)
    else:
        for i, module in enumerate(modules):
            module.load_state_dict(loaded[f"model{i}"], strict=True)
    if load_optimizer and optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
        untie_adam_steps(optimizer)
        # The flags, not the checkpoint, set each group's LR range and decay (a new stage's --lr).
        for group, values in zip(optimizer.param_groups, configured):
            group.update(values)
    if load_scheduler and scheduler is not None:
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if same_layout and "rng_state" in loaded:
        rng = loaded["rng_state"]
        _set_rng_state(rng[0] if isinstance(rng, list) else rng)
    common["iteration"] = iteration
    return common


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


def _layout() -> list[int]:
    return [parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size()]


def common_extra(model_config, consumed_train_samples: int, growth: dict | None = None) -> dict:
    """The plain-data part of a checkpoint (saved once, by rank 0): data position, layout, the
    model config and, while MSG masks are still ramping, the growth record."""
    flm = {"model_config": asdict(model_config)}
    if growth is not None:
        flm["growth"] = growth
    return {"consumed_train_samples": consumed_train_samples, "parallel_layout": _layout(), "flm": flm}
