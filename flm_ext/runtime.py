"""CPU runtime for megatron-core, and process-group / seed set-up for every entry point.

megatron-core assumes CUDA in a few places. On a machine without CUDA, `enable_cpu_runtime()`
applies the small, named patches below so that the same megatron-core code runs on CPU with the
gloo backend. When CUDA is available it does nothing at all (a strict no-op), so GPU runs use
megatron-core exactly as shipped. Each patch is listed in `CPU_PATCHES`, can be left out by name
(tests show that each one is needed), and is described where it is defined.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from flm_ext.config import ParallelConfig

CPU = torch.device("cpu")


# --- patch: current_device ------------------------------------------------------------------
# Buffers (DDP grad buffers, p2p shapes, TP all-gathers, the distributed optimizer) are
# allocated with `device=torch.cuda.current_device()`; on CPU that must mean the CPU.
def _patch_current_device():
    torch.cuda.current_device = lambda: CPU


# --- patch: synchronize ---------------------------------------------------------------------
# DDP, p2p communication and checkpoint writing call `torch.cuda.synchronize()`: nothing to wait for.
def _patch_synchronize():
    torch.cuda.synchronize = lambda device=None: None


# --- patch: cuda_tensors --------------------------------------------------------------------
class _CudaToCpu(TorchFunctionMode):
    """Maps hard-coded CUDA placements to the CPU.

    Covers `torch.zeros(..., device="cuda")` (the schedules' token counter, grad clipping, the
    FP32 optimizer's scale), `tensor.cuda()` / `.to("cuda")` (optimizer state loading), and
    `tensor.type()`, which megatron's optimizers compare with 'torch.cuda.FloatTensor' to sort
    parameters by precision.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and "dtype" not in kwargs:
            name = func(*args, **kwargs)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        device = kwargs.get("device")
        if device is not None and _is_cuda(device):
            kwargs["device"] = CPU
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], CPU, *args[2:])
        return func(*args, **kwargs)


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


_MODE: _CudaToCpu | None = None


def _patch_cuda_tensors():
    global _MODE
    _MODE = _CudaToCpu()
    _MODE.__enter__()  # process-wide: active for the life of the process


# --- patch: rng_tracker ---------------------------------------------------------------------
# Megatron keeps separate RNG streams for TP-sharded and replicated regions in CUDA generator
# states. On CPU the tracker keeps CPU generator states instead, with the same semantics.
def _patch_rng_tracker():
    from megatron.core.tensor_parallel import random as mpu_random

    class CPURNGStatesTracker(mpu_random.CudaRNGStatesTracker):
        def add(self, name, seed):
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self._is_initialized = True
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name=mpu_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            original = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(original)

    mpu_random.CudaRNGStatesTracker = CPURNGStatesTracker
    mpu_random.initialize_rng_tracker(force_reset=True)


@dataclass(frozen=True)
class Patch:
    name: str
    apply: Callable[[], None]


CPU_PATCHES: tuple[Patch, ...] = (
    Patch("current_device", _patch_current_device),
    Patch("synchronize", _patch_synchronize),
    Patch("cuda_tensors", _patch_cuda_tensors),
    Patch("rng_tracker", _patch_rng_tracker),
)

_applied: set[str] = set()


def enable_cpu_runtime(skip: tuple[str, ...] = ()) -> list[str]:
    """Apply the CPU patches (idempotent) and return the names applied; [] when CUDA is available.

    Patches named in `skip` or in the environment variable FLM_CPU_RUNTIME_SKIP (comma-separated,
    for diagnosing megatron-core upgrades) are left out.
    """
    if torch.cuda.is_available():
        return []
    skip = tuple(skip) + tuple(n for n in os.environ.get("FLM_CPU_RUNTIME_SKIP", "").split(",") if n)
    unknown = set(skip) - {p.name for p in CPU_PATCHES}
    if unknown:
        raise ValueError(f"unknown CPU patch(es) {sorted(unknown)}; known: {[p.name for p in CPU_PATCHES]}")
    for patch in CPU_PATCHES:
        if patch.name not in skip and patch.name not in _applied:
            patch.apply()
            _applied.add(patch.name)
    return sorted(_applied)


def device() -> torch.device:
    """The device this process computes on."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else CPU


# What torchrun (and tests/distributed.py's spawn) set for a rank to join a rendezvous.
RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_USE_AGENT_STORE")


def lone_process_env(env) -> dict:
    """`env` without rendezvous variables: a child started with it is a lone process, which
    `initialize_distributed` starts on an in-process store, with no port to take or lose."""
    return {k: v for k, v in env.items() if k not in RENDEZVOUS_VARS}


def initialize_distributed(parallel: ParallelConfig, seed: int = 1234, *, rank: int | None = None,
                           world_size: int | None = None, init_method: str | None = None,
                           timeout_minutes: int = 30) -> None:
    """Start torch.distributed (nccl on GPU, gloo on CPU) and megatron's parallel groups, then seed.

    Reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT as set by torchrun unless given.
    `timeout_minutes` (the trainer's --distributed-timeout-minutes) bounds every collective of the
    default and megatron's groups.
    """
    from megatron.core import parallel_state, tensor_parallel

    enable_cpu_runtime()
    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = datetime.timedelta(minutes=timeout_minutes)
        if init_method is None and world_size == 1 and "MASTER_PORT" not in os.environ:
            # A lone process (not under torchrun) needs no TCP rendezvous, and no port that may be taken.
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            if init_method is None:
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29500")
                init_method = "env://"
            dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                    timeout=timeout)
    world = dist.get_world_size()
    if world % parallel.model_parallel_size:
        from flm_ext.config import ConfigError

        raise ConfigError(f"world size {world} is not divisible by tensor_model_parallel_size x "
                          f"pipeline_model_parallel_size = {parallel.model_parallel_size}")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
            distributed_timeout_minutes=timeout_minutes,
        )
    set_seed(seed)


def init_single_process(seed: int = 1234) -> None:
    """torch.distributed with world size 1 and megatron TP = PP = 1 in this process (tools, tests,
    evaluation): an in-process store, so no port is needed and none can clash, even under torchrun."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)
    initialize_distributed(ParallelConfig(), seed=seed)


def set_seed(seed: int) -> None:
    """Seed Python-side RNGs and megatron's TP-aware RNG tracker.

    The default generator gets the same seed on every rank, so CPU-initialised weights (built
    whole, then sliced) are identical to a TP=1 run; the tracker gives TP ranks distinct streams.
    """
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()

