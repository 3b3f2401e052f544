"""The failure side of a schedule: expected GPU-hours lost to failures per stage and the save interval
that minimises them (`tools/plan_schedule.py`, second table; the launchers' default --save-interval).

Why: at 192 GPUs for three weeks failures are routine. Each failure costs a restart (detect, relaunch,
load the newest checkpoint) plus the work since that checkpoint (half a save interval on average);
each save blocks training for its save cost. With system MTBF M, save cost C, restart cost R, save
interval t and compute time T, the expected time lost is

    lost(t) = T/t * C  +  T/M * (R + t/2)

which is smallest at Young's interval t* = sqrt(2 C M) (J. W. Young, 1974; Daly's higher-order
correction changes it by under 1% while C << M, as here). Rounded to whole steps for --save-interval.

Assumed unless given (printed with the table):
- MTBF per node: 6,335 hours, from Llama 3 (Dubey et al. 2024, section 3.3.4): 419 unexpected
  interruptions in 54 days on 16,384 GPUs (2,048 nodes of 8), i.e. 3.09 h for the whole system.
- A checkpoint holds 14 bytes per parameter (bf16 weights 2, fp32 main weights 4, Adam's two moments
  8: 1.42 TB at 101.7B), written and read at 10 GB/s aggregate (a parallel file system; measure
  yours); save cost = size / bandwidth (a blocking save; an async save blocks for less: pass
  --save-seconds), restart cost = 300 s (relaunch, rendezvous, start-up) + the read.
- Step time from the plan: global batch x sequence x FLOPs per token / (TFLOP/s x GPUs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from flm_ext.config import num_parameters
from flm_ext.flags import flag, flag_names
from flm_ext.planning import PAPER_STAGES, PlanError, Stage
from flm_ext.training.metrics import flops_per_token

# Llama 3's interruption rate (module docstring): hours between failures of one 8-GPU node.
DEFAULT_MTBF_NODE_HOURS = 54 * 24 * 2048 / 419
BYTES_PER_PARAMETER = 14
DEFAULT_CKPT_GBPS = 10.0
DEFAULT_RESTART_OVERHEAD_S = 300.0
DEFAULT_GPUS_PER_NODE = 8
# The paper's global batches per stage (docs/FLM.md section 2), in sequences of 2048 tokens.
PAPER_GLOBAL_BATCH = {"FLM-16B": 2304, "FLM-51B": 2304, "FLM-101B": 2160}
LAUNCHER_SCRIPTS = ("flm101b_stage1.sh", "flm101b_stage2.sh", "flm101b_stage3.sh")  # PAPER_STAGES' order


@dataclass(frozen=True)
class FailureModel:
    mtbf_node_hours: float = flag(DEFAULT_MTBF_NODE_HOURS, metavar="H", help=(
        f"mean time between failures of one node (default {DEFAULT_MTBF_NODE_HOURS:,.0f}: Llama 3's rate)"))
    ckpt_gbps: float = flag(DEFAULT_CKPT_GBPS, metavar="GB/S",
                            help="aggregate checkpoint write and read bandwidth (default 10)")
    restart_overhead_s: float = DEFAULT_RESTART_OVERHEAD_S
    gpus_per_node: int = flag(DEFAULT_GPUS_PER_NODE)
    save_s: float | None = flag(None, name="--save-seconds", metavar="S",  # overrides size / bandwidth
                                help="time a save blocks training (default: checkpoint size / --ckpt-gbps)")
    restart_s: float | None = flag(None, name="--restart-seconds", metavar="S",  # overrides overhead + read
                                   help="failure to training again (default: 300 s + checkpoint size / --ckpt-gbps)")
    step_s: float | None = flag(None, name="--step-seconds", metavar="S",
                                help="time per step (default: from the plan's TFLOP/s and the global batch)")
    global_batch_size: int = flag(2304, help="sequences per step of stages other than the paper's (default 2304)")

    def check(self) -> None:
        flags = flag_names(FailureModel)  # tools/plan_schedule.py's names
        for name in ("mtbf_node_hours", "ckpt_gbps", "save_s", "restart_s", "step_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise PlanError(f"{flags[name]} {value!r} must be a finite number > 0")
        if not (math.isfinite(self.restart_overhead_s) and self.restart_overhead_s >= 0):
            raise PlanError(f"restart overhead {self.restart_overhead_s!r} s must be a finite number >= 0")
        if self.gpus_per_node < 1 or self.global_batch_size < 1:
            raise PlanError("--gpus-per-node and --global-batch-size must be >= 1")


def lost_seconds(t: float, *, compute_s: float, mtbf_s: float, save_s: float, restart_s: float) -> float:
    """Expected wall time lost over `compute_s` of training with a save every `t` seconds."""
    return compute_s / t * save_s + compute_s / mtbf_s * (restart_s + t / 2)


def young_interval(save_s: float, mtbf_s: float) -> float:
    return math.sqrt(2 * save_s * mtbf_s)


def stage_failures(stage: Stage, failures: FailureModel = FailureModel(), *, old_interval_steps: int = 500) -> dict:
    """One stage's failure budget (JSON-ready): inputs, Young's interval in seconds and steps, and the
    expected lost GPU-hours at that interval and at `old_interval_steps`."""
    failures.check()
    model = stage.model
    gbs = PAPER_GLOBAL_BATCH.get(stage.name, failures.global_batch_size)
    per_token = flops_per_token(model)
    step_s = failures.step_s or gbs * model.seq_length * per_token / (stage.tflops_per_gpu * 1e12 * stage.gpus)
    compute_s = stage.tokens * per_token / (stage.tflops_per_gpu * 1e12 * stage.gpus)
    nodes = max(1, math.ceil(stage.gpus / failures.gpus_per_node))
    mtbf_s = failures.mtbf_node_hours * 3600 / nodes
    ckpt_bytes = num_parameters(model) * BYTES_PER_PARAMETER
    io_s = ckpt_bytes / (failures.ckpt_gbps * 1e9)
    save_s = failures.save_s or io_s
    restart_s = failures.restart_s or failures.restart_overhead_s + io_s
    best_s = young_interval(save_s, mtbf_s)
    steps = max(1, round(best_s / step_s))
    kw = dict(compute_s=compute_s, mtbf_s=mtbf_s, save_s=save_s, restart_s=restart_s)
    return {"name": stage.name, "gpus": stage.gpus, "nodes": nodes, "system_mtbf_h": mtbf_s / 3600,
            "expected_failures": compute_s / mtbf_s, "step_s": step_s, "checkpoint_bytes": ckpt_bytes,
            "save_s": save_s, "restart_s": restart_s, "young_interval_s": best_s, "save_interval_steps": steps,
            "lost_gpu_hours": lost_seconds(steps * step_s, **kw) * stage.gpus / 3600,
            "old_interval_steps": old_interval_steps,
            "lost_gpu_hours_at_old_interval": lost_seconds(old_interval_steps * step_s, **kw) * stage.gpus / 3600}


def failure_plan(stages=PAPER_STAGES, failures: FailureModel = FailureModel()) -> dict:
    rows = [stage_failures(s, failures) for s in stages]
    return {"stages": rows, "total_lost_gpu_hours": sum(r["lost_gpu_hours"] for r in rows),
            "assumptions": {
                "mtbf_per_node_hours": failures.mtbf_node_hours,
                "mtbf_source": ("Llama 3: 419 unexpected interruptions in 54 days on 2,048 nodes of 8 GPUs"
                                if failures.mtbf_node_hours == DEFAULT_MTBF_NODE_HOURS else "given"),
                "checkpoint": f"{BYTES_PER_PARAMETER} bytes per parameter (bf16 weights, fp32 main weights, Adam moments)",
                "save_cost": ("given" if failures.save_s else
                              f"checkpoint size / {failures.ckpt_gbps:g} GB/s (blocking save)"),
                "restart_cost": ("given" if failures.restart_s else
                                 f"{failures.restart_overhead_s:g} s relaunch + checkpoint size / {failures.ckpt_gbps:g} GB/s"),
                "interval": "Young: sqrt(2 x save cost x system MTBF), rounded to whole steps",
            }}


def format_failures(result: dict) -> str:
    head = ["stage", "nodes", "MTBF(sys)", "failures", "step", "save", "restart", "Young interval",
            "lost GPU-h", "lost GPU-h @ 500 steps"]
    body = []
    for r in result["stages"]:
        body.append([r["name"], str(r["nodes"]), f"{r['system_mtbf_h']:.0f} h", f"{r['expected_failures']:.1f}",
                     f"{r['step_s']:.1f} s", f"{r['save_s']:.0f} s", f"{r['restart_s']:.0f} s",
                     f"{r['save_interval_steps']} steps ({r['young_interval_s'] / 3600:.2f} h)",
                     f"{r['lost_gpu_hours']:,.0f}", f"{r['lost_gpu_hours_at_old_interval']:,.0f}"])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    out = ["expected loss to failures (the launchers' default --save-interval is the Young interval):"]
    out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in [head] + body]
    out.insert(2, "  ".join("-" * w for w in widths))
    out.append(f"total expected loss: {result['total_lost_gpu_hours']:,.0f} GPU-hours")
    out.append("assumed (failures):")
    for key, value in result["assumptions"].items():
        out.append(f"  {key.replace('_', ' ')}: {value:,.0f}" if isinstance(value, float)
                   else f"  {key.replace('_', ' ')}: {value}")
    return "\n".join(out)


__all__ = ["FailureModel", "DEFAULT_MTBF_NODE_HOURS", "LAUNCHER_SCRIPTS", "lost_seconds", "young_interval",
           "stage_failures", "failure_plan", "format_failures"]
