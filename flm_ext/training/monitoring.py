"""What a long run watches besides the loss: per-rank step times (stragglers), loss spikes, and the
wall-clock limit of an allocation (`--exit-duration-in-mins`).

Stragglers: our own timer, not megatron-core's `StragglerDetector`, which times CUDA kernels with
CUDA events and NVML (nothing to time on CPU) and is configured through Megatron-LM's global args.
Each rank measures its compute time per step: from the start of the step until it enters
megatron's `finalize_model_grads` (the data-parallel gradient reduction, where a fast replica
starts waiting for a slow one). Every --log-interval the ranks all-gather their mean and rank 0
logs min / median / max with the ranks at the extremes; per-rank tokens/s over that compute time go
to TensorBoard. A slow data-parallel replica or pipeline stage stands out; the tensor-parallel
ranks of one replica wait for each other inside the layers and look alike.

Loss spikes: a finite loss above `factor` x the median of the last `window` finite losses. Not
megatron-core's `RerunStateMachine`: it is driven by Megatron-LM's training loop and global args
(`--rerun-mode`, its own data-iterator wrapper and checkpoint hooks) and re-runs a step in
memory to tell a hardware fault from the data; FLM's answer to a data spike is simpler and
independent of that loop: log the batch's sample ids (flm_ext.training.trainer), and with
`--loss-spike-rollback` reload the latest checkpoint and skip that batch when the run gets there.
"""
from __future__ import annotations

import statistics
import time
from collections import deque

import torch
import torch.distributed as dist


class StepTimer:
    """Per-rank compute time of each step (see the module docstring); `spread()` every log interval."""

    def __init__(self, chunks):
        self.step_start = None
        self.compute_s: list[float] = []
        config = chunks[0].config
        finalize = config.finalize_model_grads_func

        def timed_finalize(*args, **kwargs):
            if self.step_start is not None:
                self.compute_s.append(time.perf_counter() - self.step_start)
                self.step_start = None
            return finalize(*args, **kwargs)

        config.finalize_model_grads_func = timed_finalize

    def start_step(self) -> None:
        self.step_start = time.perf_counter()

    def spread(self) -> list[float]:
        """Every rank's mean compute time per step since the last call (same list on every rank)."""
        mine = statistics.fmean(self.compute_s) if self.compute_s else float("nan")
        self.compute_s = []
        device = "cuda" if torch.cuda.is_available() else "cpu"
        gathered = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, torch.tensor([mine], dtype=torch.float64, device=device))
        return [t.item() for t in gathered]


def describe_spread(times: list[float]) -> str:
    """'compute per step: min 0.10 s (rank 1), median 0.11 s, max 0.31 s (rank 0), spread 3.1x'."""
    ranked = sorted(range(len(times)), key=lambda r: times[r])
    lo, hi = ranked[0], ranked[-1]
    median = statistics.median(times)
    ratio = times[hi] / times[lo] if times[lo] > 0 else float("inf")
    return (f"rank compute per step: min {times[lo]:.3f} s (rank {lo}), median {median:.3f} s, "
            f"max {times[hi]:.3f} s (rank {hi}), spread {ratio:.2f}x")


class LossSpikeDetector:
    """Finite losses above `factor` x the running median of the last `window` finite losses."""

    def __init__(self, factor: float, window: int, min_history: int = 3):
        self.factor, self.min_history = factor, min_history
        self.history: deque[float] = deque(maxlen=window)

    def median(self) -> float | None:
        return statistics.median(self.history) if len(self.history) >= self.min_history else None

    def check(self, loss: float) -> float | None:
        """The running median when `loss` is a spike (the spike stays out of the history), else None."""
        if not torch.isfinite(torch.tensor(loss)):
            return None  # non-finite steps are the skip logic's business
        median = self.median()
        if median is not None and loss > self.factor * median:
            return median
        self.history.append(loss)
        return None


class TimeLimit:
    """`--exit-duration-in-mins`: true on every rank once any rank's run has lasted that long."""

    def __init__(self, minutes: float | None, start: float | None = None):
        self.minutes, self.start = minutes, start if start is not None else time.time()

    def reached(self) -> bool:
        if self.minutes is None:
            return False
        late = (time.time() - self.start) / 60 >= self.minutes
        flag = torch.tensor([int(late)], dtype=torch.int32, device="cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
