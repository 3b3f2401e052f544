"""Schedule planner: compute, GPU-days, wall time and cost of a growth schedule, next to training
the final model from scratch on the same tokens (`tools/plan_schedule.py`).

Why: FLM-101B's headline is a time and money figure (21.54 days vs an estimated 76.74 from
scratch, about $100K, 52.76 zettaFLOPs; docs/FLM.md section 2). This module recomputes it from the
stage shapes, tokens, layouts and achieved TFLOP/s per GPU, so a new schedule (other shapes, token
budgets, cluster or price) can be priced before any GPU is booked, and says which assumptions it
rests on. FLOPs per token come from `flm_ext.training.metrics.flops_per_token`, the same function
the trainer's TFLOP/s log line uses, so a measured TFLOP/s from a real run plugs straight in.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from flm_ext.config import ConfigError, FLMConfig, ParallelConfig, PRESETS, get_preset, num_parameters, validate
from flm_ext.flags import flag
from flm_ext.training.metrics import flops_per_token

SECONDS_PER_DAY = 86_400.0

# Chosen, not published: the paper's "about $100K" over its 21.54 days x 192 GPUs (99,256 GPU-hours)
# is about $1.0 per GPU-hour.
DEFAULT_PRICE_PER_GPU_HOUR = 1.0


class PlanError(ValueError):
    """Bad stage description or option; the message names the flag and the value."""


@dataclass(frozen=True)
class Stage:
    """One training stage: what is trained, on how many tokens, how it is laid out, how fast it ran."""

    name: str
    model: FLMConfig
    tokens: float
    tp: int
    pp: int
    dp: int
    tflops_per_gpu: float  # achieved, counted with the same FLOPs formula as the plan

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp


# The paper's three stages (docs/FLM.md section 2). The 16B shape is not published (see PRESETS).
PAPER_STAGES = (
    Stage("FLM-16B", get_preset("flm-16b"), 245.37e9, 2, 1, 96, 162.0),
    Stage("FLM-51B", get_preset("flm-51b"), 39.64e9, 4, 2, 24, 160.0),
    Stage("FLM-101B", get_preset("flm-101b"), 26.54e9, 4, 4, 12, 165.0),
)
# The paper's own figures, printed beside the plan of the default stages.
PAPER = {"days": (9.63, 5.37, 6.54), "total_days": 21.54, "scratch_days": 76.74, "saving": 0.72,
         "zettaflops": 52.76, "cost_usd": 100_000.0}

_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def parse_number(text: str, what: str) -> float:
    """'245.37e9', '245.37B', '39.64G' -> float (finite, > 0)."""
    t = text.strip()
    scale = 1.0
    if t[-1:].upper() in _SUFFIX:
        scale, t = _SUFFIX[t[-1].upper()], t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise PlanError(f"{what} {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise PlanError(f"{what} {text!r} must be a finite number > 0")
    return value


def parse_model(text: str) -> FLMConfig:
    """A preset name (flm-16b, ...) or LAYERSxHIDDENxHEADS, e.g. 40x5632x44 (FFN 4x, seq 2048, vocab 100,352)."""
    if text in PRESETS:
        return get_preset(text)
    match = _SHAPE.match(text)
    if not match:
        raise PlanError(f"model {text!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                        f"nor LAYERSxHIDDENxHEADS like 40x5632x44")
    layers, hidden, heads = map(int, match.groups())
    model = FLMConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads)
    try:
        validate(model)
    except ConfigError as error:
        raise PlanError(f"model {text!r}: {error}") from None
    return model


def parse_stage(text: str) -> Stage:
    """MODEL:TOKENS:TP/PP/DP:TFLOPS[:NAME], e.g. flm-16b:245.37e9:2/1/96:162."""
    parts = text.split(":")
    if len(parts) not in (4, 5):
        raise PlanError(f"--stage {text!r}: expected MODEL:TOKENS:TP/PP/DP:TFLOPS[:NAME]")
    try:
        model = parse_model(parts[0])
        tokens = parse_number(parts[1], "tokens")
        layout = parts[2].split("/")
        if len(layout) != 3 or not all(x.isdigit() and int(x) > 0 for x in layout):
            raise PlanError(f"layout {parts[2]!r} must be TP/PP/DP, three positive integers")
        tp, pp, dp = map(int, layout)
        tflops = parse_number(parts[3], "TFLOP/s per GPU")
        try:
            validate(model, ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                           world_size=tp * pp * dp))
        except ConfigError as error:
            raise PlanError(f"layout {parts[2]}: {error}") from None
    except PlanError as error:
        if str(error).startswith("--stage"):
            raise
        raise PlanError(f"--stage {text!r}: {error}") from None
    name = parts[4] if len(parts) == 5 and parts[4] else parts[0]
    return Stage(name, model, tokens, tp, pp, dp, tflops)


def _shape(model: FLMConfig) -> str:
    return f"{model.num_layers} x {model.hidden_size}, {model.num_attention_heads} heads"


def _cost_row(model: FLMConfig, tokens: float, gpus: int, tflops: float, price: float, *, attention: bool,
              recompute: bool) -> dict:
    flops = tokens * flops_per_token(model, attention=attention, recompute=recompute)
    gpu_seconds = flops / (tflops * 1e12)
    gpu_days = gpu_seconds / SECONDS_PER_DAY
    return {"flops": flops, "gpu_days": gpu_days, "days": gpu_days / gpus, "cost_usd": gpu_seconds / 3600 * price}


def plan(stages=PAPER_STAGES, *, price_per_gpu_hour: float = DEFAULT_PRICE_PER_GPU_HOUR, attention: bool = True,
         recompute: bool = False) -> dict:
    """Per stage and total: FLOPs, GPU-days, days, cost; the last stage's model trained from scratch on
    all tokens at the last stage's layout and TFLOP/s; the time saved. Plain dict (JSON-ready)."""
    stages = list(stages)
    if not stages:
        raise PlanError("no stages")
    if not (math.isfinite(price_per_gpu_hour) and price_per_gpu_hour >= 0):
        raise PlanError(f"--price-per-gpu-hour {price_per_gpu_hour!r} must be a finite number >= 0")
    kw = dict(attention=attention, recompute=recompute)
    rows = []
    for s in stages:
        row = _cost_row(s.model, s.tokens, s.gpus, s.tflops_per_gpu, price_per_gpu_hour, **kw)
        rows.append({"name": s.name, "shape": _shape(s.model), "parameters": num_parameters(s.model),
                     "tokens": s.tokens, "layout": f"{s.tp}/{s.pp}/{s.dp}", "gpus": s.gpus,
                     "tflops_per_gpu": s.tflops_per_gpu, **row})
    total = {key: sum(r[key] for r in rows) for key in ("flops", "gpu_days", "days", "cost_usd", "tokens")}
    final = stages[-1]
    scratch = {"name": f"{final.name} from scratch", "shape": _shape(final.model),
               "parameters": num_parameters(final.model), "tokens": total["tokens"],
               "layout": f"{final.tp}/{final.pp}/{final.dp}", "gpus": final.gpus,
               "tflops_per_gpu": final.tflops_per_gpu,
               **_cost_row(final.model, total["tokens"], final.gpus, final.tflops_per_gpu, price_per_gpu_hour, **kw)}
    result = {
        "stages": rows, "total": total, "scratch": scratch,
        "saving": {"days": 1.0 - total["days"] / scratch["days"], "cost": 1.0 - total["cost_usd"] / scratch["cost_usd"]
                   if scratch["cost_usd"] else 0.0, "flops": 1.0 - total["flops"] / scratch["flops"]},
        "assumptions": {
            "flops_per_token": ("6N + 12 L a s (Megatron model FLOPs; a = heads x head size, s = sequence)"
                                if attention else "6N"),
            "recomputation_counted": recompute,
            "price_per_gpu_hour": price_per_gpu_hour,
            "wall_time": "compute only: FLOPs / (TFLOP/s x GPUs); no checkpointing, evaluation, restarts or growth time",
            "scratch": "last stage's model, layout and TFLOP/s on the total tokens",
        },
    }
    if tuple(stages) == PAPER_STAGES:
        result["paper"] = PAPER
        result["assumptions"]["16B_shape"] = (f"{_shape(stages[0].model)} "
                                                  f"({num_parameters(stages[0].model) / 1e9:.2f}B; not published)")
    return result


def _fmt_money(x: float) -> str:
    return f"${x / 1e3:,.1f}K" if x < 1e6 else f"${x / 1e6:,.2f}M"


def format_plan(result: dict) -> str:
    """A readable table; paper figures beside it when the stages are the paper's."""
    paper = result.get("paper")
    head = ["stage", "shape", "params", "tokens", "TP/PP/DP", "GPUs", "TFLOP/s", "ZFLOPs", "GPU-days", "days",
            "cost"] + (["paper days"] if paper else [])

    def line(r, paper_days=""):
        cells = [r["name"], r["shape"], f"{r['parameters'] / 1e9:.2f}B", f"{r['tokens'] / 1e9:.2f}B",
                 r.get("layout", ""), str(r.get("gpus", "")), f"{r['tflops_per_gpu']:g}" if "tflops_per_gpu" in r else "",
                 f"{r['flops'] / 1e21:.2f}", f"{r['gpu_days']:,.0f}", f"{r['days']:.2f}", _fmt_money(r["cost_usd"])]
        return cells + ([paper_days] if paper else [])

    body = [line(r, f"{paper['days'][i]:.2f}" if paper else "") for i, r in enumerate(result["stages"])]
    t = result["total"]
    body.append(line({"name": "total", "shape": "", "parameters": 0, **t}, f"{paper['total_days']:.2f}" if paper else ""))
    body[-1][2] = ""
    body.append(line(result["scratch"], f"{paper['scratch_days']:.2f}" if paper else ""))
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
           for row in [head] + body]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.insert(len(out) - 1, "  ".join("-" * w for w in widths))
    s = result["saving"]
    out.append("")
    out.append(f"saving vs from scratch: {s['days']:.1%} of the time, {s['flops']:.1%} of the FLOPs"
               + (f" (paper: {paper['saving']:.0%} of the time)" if paper else ""))
    out.append(f"total compute: {t['flops'] / 1e21:.2f} zettaFLOPs"
               + (f" (paper: {paper['zettaflops']:.2f})" if paper else "")
               + f"; cost {_fmt_money(t['cost_usd'])}" + (" (paper: about $100K)" if paper else ""))
    out.append("assumed:")
    for key, value in result["assumptions"].items():
        if key == "price_per_gpu_hour":
            value = f"${value:.2f}" + (" (default: the paper's about $100K over 21.54 days x 192 GPUs)"
                                       if value == DEFAULT_PRICE_PER_GPU_HOUR else "")
        out.append(f"  {key.replace('_', ' ')}: {value}")
    if paper:
        out.append("vs the paper (docs/FLM.md section 2):")
        for r, d in zip(result["stages"], paper["days"]):
            out.append(f"  {r['name']}: {r['days']:.2f} days planned vs {d:.2f} reported ({r['days'] / d - 1:+.1%})")
        out.append(f"  total {t['days']:.2f} vs {paper['total_days']:.2f} days ({t['days'] / paper['total_days'] - 1:+.1%}); "
                   f"from scratch {result['scratch']['days']:.2f} vs {paper['scratch_days']:.2f} "
                   f"({result['scratch']['days'] / paper['scratch_days'] - 1:+.1%}); "
                   f"FLOPs {t['flops'] / 1e21:.2f} vs {paper['zettaflops']:.2f} ZFLOPs "
                   f"({t['flops'] / 1e21 / paper['zettaflops'] - 1:+.1%})")
        out.append("  residual: reported days are wall time (checkpoints, evaluation, restarts, the offline growth")
        out.append("  between stages) where the plan counts compute only; the 16B shape is a guess; the paper does")
        out.append("  not say which FLOPs formula its 52.76 ZFLOPs and TFLOP/s use. Its 76.74 days equal stage 3's")
        out.append("  days per token x all tokens, which is also how the plan extrapolates, so the saving agrees.")
    return "\n".join(out)


# --- growth methods at FLM's sizes, from a measured compute ratio ------------------------------------

def parse_method_ratio(text: str) -> tuple[str, float | None]:
    """'stack=0.62' -> ('stack', 0.62); 'random=none' -> ('random', None): never reached scratch's loss."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise PlanError(f"--method-ratio {text!r} must be NAME=RATIO, e.g. stack=0.62")
    if value.lower() in ("none", "null"):
        return name, None
    ratio = parse_number(value, f"--method-ratio {text!r}")
    if not 0 < ratio < math.inf:
        raise PlanError(f"--method-ratio {text!r}: the ratio must be a finite number > 0")
    return name, ratio


def load_method_ratios(path: str) -> dict[str, float | None]:
    """Per method, its training FLOPs to reach the scratch run's final validation loss over the scratch
    run's FLOPs (mean over seeds; None where it did not reach it), from the `result.json` of
    benchmarks/growth_vs_scratch.py (`methods.<name>.flops_ratio`)."""
    import json

    try:
        with open(path) as f:
            methods = json.load(f)["methods"]
        ratios = {name: row["flops_ratio"] for name, row in methods.items()}
    except OSError as e:
        raise PlanError(f"--method-ratios {path}: {e.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PlanError(f"--method-ratios {path}: not a growth_vs_scratch result.json with methods.<name>.flops_ratio "
                        f"({type(e).__name__}: {e})") from None
    for name, ratio in ratios.items():
        if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < ratio < math.inf):
            raise PlanError(f"--method-ratios {path}: methods.{name}.flops_ratio={ratio!r} must be a number > 0 or null")
    return ratios


def method_plan(result: dict, ratios: dict[str, float | None]) -> list[dict]:
    """Days, GPU-days and cost of reaching what the final model trained from scratch reaches, under
    each method: its measured compute ratio times the plan's from-scratch row (same model, layout,
    TFLOP/s and price). Assumes the ratio measured at the benchmark's scale holds at FLM's."""
    scratch = result["scratch"]
    rows = [{"method": "scratch", "flops_ratio": 1.0, **{k: scratch[k] for k in ("flops", "gpu_days", "days",
                                                                                    "cost_usd")}}]
    for name, ratio in ratios.items():
        row = {"method": name, "flops_ratio": ratio}
        row.update({k: (scratch[k] * ratio if ratio is not None else None)
                    for k in ("flops", "gpu_days", "days", "cost_usd")})
        rows.append(row)
    return rows


def format_method_plan(rows: list[dict], result: dict) -> str:
    scratch = result["scratch"]
    out = [f"growth methods at this plan's sizes: {scratch['name']} quality ({scratch['tokens'] / 1e9:.2f}B tokens "
           f"from scratch = {scratch['days']:.2f} days on {scratch['gpus']} GPUs) reached with each method's measured "
           f"compute ratio",
           f"{'method':<10} {'FLOPs ratio':>11} {'ZFLOPs':>8} {'GPU-days':>9} {'days':>7} {'cost':>9} {'saving':>7}"]
    for r in rows:
        if r["flops_ratio"] is None:
            out.append(f"{r['method']:<10} {'not reached':>11} (did not reach scratch's final loss in the benchmark)")
            continue
        out.append(f"{r['method']:<10} {r['flops_ratio']:>11.3f} {r['flops'] / 1e21:>8.2f} {r['gpu_days']:>9,.0f} "
                   f"{r['days']:>7.2f} {_fmt_money(r['cost_usd']):>9} {1 - r['flops_ratio']:>7.1%}")
    out.append("assumed: the ratio measured on the benchmark's tiny models holds at these sizes (not verified); "
               "the grown schedule's own stage layouts are not modelled, only its compute")
    return "\n".join(out)


@dataclass(frozen=True)
class PlanArgs:
    """tools/plan_schedule.py's flags for the plan (the failure side's are FailureModel's)."""

    stage: list[str] | None = flag(None, action="append", metavar="SPEC",
                                   help="a stage (repeatable; replaces the paper's three stages)")
    price_per_gpu_hour: float = flag(DEFAULT_PRICE_PER_GPU_HOUR, metavar="USD", help=(
        f"price of one GPU-hour (default {DEFAULT_PRICE_PER_GPU_HOUR:g}: the paper's about $100K over 21.54 days x "
        f"192 GPUs)"))
    flops: str = flag("megatron", choices=("megatron", "6n"),
                      help="FLOPs per token: 'megatron' = 6N + 12 L h s (default; the trainer's), '6n' = 6N")
    recompute: bool = flag(False, help="count full activation recomputation (one more forward) in the FLOPs")
    json: bool = flag(False, help="print the plan as JSON instead of a table")
    method_ratios: str | None = flag(None, metavar="JSON", help=(
        "benchmarks/growth_vs_scratch.py's result.json: add days and cost under each growth method (its measured "
        "FLOPs to reach scratch's loss / scratch's FLOPs)"))
    method_ratio: list[str] = flag(default_factory=list, action="append", metavar="NAME=RATIO",
                                   help="a measured compute ratio by hand, e.g. stack=0.62 (repeatable; after "
                                        "--method-ratios)")


__all__ = ["parse_method_ratio", "load_method_ratios", "method_plan", "format_method_plan",
           "Stage", "PlanError", "PAPER_STAGES", "PAPER", "DEFAULT_PRICE_PER_GPU_HOUR", "parse_stage",
           "parse_model", "parse_number", "plan", "format_plan"]
