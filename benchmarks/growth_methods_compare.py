"""Growth operators against scratch at equal training compute (`growth_vs_scratch.py --methods ...`).

Every schedule ends in the same model (BIG) after the same total training FLOPs as the scratch run
of BIG: it first trains its own small model for `--small-fraction` of the budget, is grown by its
operator (weights and Adam state, flm_ext/growth/methods), and trains BIG for the rest. Each
operator starts from the small model it can grow: msg and random grow width and depth at once
(2 x 32 -> 4 x 64), stack only depth (2 x 64 -> 4 x 64), clone only width (4 x 32 -> 4 x 64).
Everything runs in this process with megatron's models, DDP wrapper and optimizer (AdamW,
constant LR after a short warm-up), on tokens of megatron .bin files (the demo's data); the
same batches in every run of a seed, validation on fixed held-out batches.

Per run: validation loss against cumulative FLOPs, the jump at growth (validation loss right
after growth minus right before), wall time. Per method over seeds: FLOPs to reach the seed's
scratch final validation loss over scratch's FLOPs (`flops_ratio`; < 1 saves compute), final loss
at equal compute, jump, wall time; a PNG with one curve per method (mean) and seed bands (min-max).
`result.json` feeds `tools/plan_schedule.py --method-ratios`.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import time

import numpy as np
import torch

from flm_ext.config import FLMConfig
from flm_ext.growth import GrowthState, apply_growth_schedule, split_layer_name
from flm_ext.growth.methods import get_method
from flm_ext.model.flm_model import build_model_chunks
from flm_ext.model.global_weights import global_state_dict, load_global_state_dict
from flm_ext.runtime import init_single_process, set_seed
from flm_ext.training.engine import build_optimizer, train_step, wrap_ddp
from flm_ext.training.optim import OptimConfig
from flm_ext.training.metrics import flops_per_token

SEQ, BATCH = 64, 8


def shapes(vocab: int) -> tuple[FLMConfig, dict[str, FLMConfig]]:
    def cfg(layers, hidden, heads):
        return FLMConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, ffn_hidden_size=4 * hidden,
                         seq_length=SEQ, vocab_size=vocab, init_method_std=0.02)
    big = cfg(4, 64, 8)
    small = {"msg": cfg(2, 32, 4), "random": cfg(2, 32, 4), "stack": cfg(2, 64, 8), "clone": cfg(4, 32, 4)}
    return big, small


class Tokens:
    """Training and validation batches from .bin token files (the tail 5% of each held out)."""

    def __init__(self, prefixes: list[str]):
        train, valid = [], []
        for prefix in prefixes:
            with open(prefix + ".json") as f:
                dtype = json.load(f)["dtype"]
            ids = np.fromfile(prefix + ".bin", dtype=dtype).astype(np.int64)
            cut = int(len(ids) * 0.95)
            train.append(ids[:cut])
            valid.append(ids[cut:])
        self.train, self.valid = np.concatenate(train), np.concatenate(valid)
        self.valid_batches = [self._batch(self.valid, np.random.default_rng(10_000 + i)) for i in range(4)]

    def _batch(self, ids: np.ndarray, rng) -> dict:
        starts = rng.integers(0, len(ids) - SEQ - 1, BATCH)
        block = torch.from_numpy(np.stack([ids[s:s + SEQ + 1] for s in starts]))
        return {"tokens": block[:, :-1], "labels": block[:, 1:], "loss_mask": torch.ones(BATCH, SEQ),
                "position_ids": torch.arange(SEQ).expand(BATCH, -1)}

    def stream(self, seed: int):
        rng = np.random.default_rng(seed)
        while True:
            yield self._batch(self.train, rng)


def _valid_loss(chunks, tokens: Tokens) -> float:
    model = chunks[0]
    with torch.no_grad():
        return statistics.mean(model(b["tokens"], b["position_ids"], None, labels=b["labels"]).mean().item()
                               for b in tokens.valid_batches)


class Run:
    """One model under training: megatron DDP + optimizer, LR warm-up then constant."""

    def __init__(self, cfg: FLMConfig, lr: float, state: dict | None = None):
        self.cfg = cfg
        self.chunks = build_model_chunks(cfg)
        if state is not None:
            load_global_state_dict(self.chunks, state)
        self.model = wrap_ddp(self.chunks)
        self.optimizer = build_optimizer(self.model, cfg, OptimConfig(lr=lr))
        [inner] = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        self.adam = inner.optimizer
        self.lr = lr

    def step(self, batch: dict, lr: float) -> float:
        for group in self.adam.param_groups:
            group["lr"] = lr
        result = train_step(self.model, self.optimizer, iter([batch]), num_microbatches=1, seq_length=SEQ,
                            micro_batch_size=BATCH)
        return result.loss


def _grow_adam(old: Run, new: Run, method, plan) -> None:
    """The grown model's Adam moments by the operator's rule (the tool's functions); step kept."""
    states = {split_layer_name(n): old.adam.state[p] for n, p in old.chunks[0].named_parameters()}
    step = next(iter(states.values()))["step"]
    for name, param in new.chunks[0].named_parameters():
        key, layer = split_layer_name(name)
        state = {"step": step.clone()}
        for role in ("exp_avg", "exp_avg_sq"):
            if layer is None:
                state[role] = method.grow_width(key, states[key, None][role], plan, role)
            else:
                state[role] = method.grow_layer(key, lambda i, r=role, k=key: states[k, i][r], plan, layer, role,
                                                dtype=torch.float32)
        new.adam.state[param] = state


def run_schedule(name: str, seed: int, big: FLMConfig, small: FLMConfig | None, budget: float, fraction: float,
                 tokens: Tokens, lr: float, warmup: int, eval_interval: int, ramp: int, log) -> dict:
    """(cumulative FLOPs, validation loss) every `eval_interval` steps, the jump at growth, wall time."""
    tps = SEQ * BATCH
    start = time.time()
    set_seed(seed)
    batches = tokens.stream(seed)
    points, flops, step = [], 0.0, 0
    cfg = small or big
    run = Run(cfg, lr)
    points.append((0.0, _valid_loss(run.chunks, tokens)))
    small_steps = round(fraction * budget / (flops_per_token(small) * tps)) if small else 0
    growth, state = None, None
    while True:
        per_step = flops_per_token(run.cfg) * tps
        if flops + per_step > budget * (1 + 1e-9):
            break
        if small is not None and growth is None and step == small_steps:
            before = _valid_loss(run.chunks, tokens)
            method = get_method(name)
            plan = method.plan(small, big, seed=seed)
            grown = Run(big, lr, method.grow_state_dict(global_state_dict(run.chunks), plan))
            _grow_adam(run, grown, method, plan)
            run = grown
            if method.uses_masks:
                state = GrowthState.from_plan(plan, ramp, start_iteration=step)
                apply_growth_schedule(run.chunks, state, step)
            after = _valid_loss(run.chunks, tokens)
            growth = {"step": step, "flops": flops, "valid_before": before, "valid_after": after,
                      "jump": after - before}
            points.append((flops, after))
            continue
        if state is not None and apply_growth_schedule(run.chunks, state, step) is None:
            state = None
        run.step(next(batches), lr * min(1.0, (step + 1) / warmup))
        step += 1
        flops += per_step
        if step % eval_interval == 0:
            points.append((flops, _valid_loss(run.chunks, tokens)))
    if points[-1][0] != flops:
        points.append((flops, _valid_loss(run.chunks, tokens)))
    wall = time.time() - start
    log(f"{name} seed {seed}: {step} steps, {flops:.3g} FLOPs, final validation loss {points[-1][1]:.4f}"
        + (f", jump at growth {growth['jump']:+.4f}" if growth else "") + f", {wall:.0f} s")
    return {"method": name, "seed": seed, "points": points, "growth": growth, "wall_s": wall, "steps": step,
            "flops": flops}


def first_reaching(points, target: float) -> float | None:
    return next((f for f, loss in points if loss <= target), None)


def summarise(runs: list[dict], methods: list[str], seeds: list[int]) -> dict:
    scratch = {r["seed"]: r for r in runs if r["method"] == "scratch"}
    out = {}
    for name in ["scratch", *methods]:
        rows = [r for r in runs if r["method"] == name]
        ratios = []
        for r in rows:
            target = scratch[r["seed"]]["points"][-1][1]
            reached = first_reaching(r["points"], target)
            ratios.append(reached / scratch[r["seed"]]["flops"] if reached is not None else None)
        finals = [r["points"][-1][1] for r in rows]
        jumps = [r["growth"]["jump"] for r in rows if r["growth"]]
        reached = [x for x in ratios if x is not None]
        out[name] = {
            "flops_ratio": statistics.mean(reached) if len(reached) == len(ratios) else None,
            "flops_ratio_per_seed": ratios,
            "final_valid_loss": statistics.mean(finals), "final_valid_loss_std": statistics.pstdev(finals),
            "final_valid_loss_per_seed": finals,
            "loss_jump": statistics.mean(jumps) if jumps else None, "loss_jump_per_seed": jumps,
            "wall_s": statistics.mean(r["wall_s"] for r in rows), "total_flops": rows[0]["flops"],
        }
    return out


def plot(runs: list[dict], methods: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in ["scratch", *methods]:
        rows = [r for r in runs if r["method"] == name]
        x = [f for f, _ in rows[0]["points"]]
        ys = np.array([[loss for _, loss in r["points"]] for r in rows])
        line, = ax.plot(x, ys.mean(0), "-", label=f"{name} (mean of {len(rows)} seeds)")
        ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(summary: dict, methods: list[str], seeds: int) -> str:
    def fmt(x, spec=".3f"):
        return "not reached" if x is None else format(x, spec)

    rows = [f"| schedule | FLOPs to reach scratch's final loss (ratio) | per seed | final validation loss "
            f"(mean ± std, {seeds} seeds) | loss jump at growth | wall time |", "|---|---|---|---|---|---|"]
    for name in ["scratch", *methods]:
        s = summary[name]
        per_seed = ", ".join(fmt(x, ".2f") for x in s["flops_ratio_per_seed"])
        rows.append(f"| {name} | {fmt(s['flops_ratio'])} | {per_seed} | {s['final_valid_loss']:.4f} ± "
                    f"{s['final_valid_loss_std']:.4f} | {fmt(s['loss_jump'], '+.4f') if s['loss_jump'] is not None else ''}"
                    f" | {s['wall_s']:.0f} s |")
    return "\n".join(rows) + "\n"


def compare(out: str, data_prefixes: list[str], methods: list[str], seeds: int, *, scratch_steps: int = 200,
            small_fraction: float = 0.25, lr: float = 3e-3, warmup: int = 10, eval_interval: int = 10,
            ramp: int = 10, image: str | None = None, log=print) -> dict:
    os.makedirs(out, exist_ok=True)
    init_single_process()
    tokens = Tokens(data_prefixes)
    vocab = int(max(tokens.train.max(), tokens.valid.max())) + 1
    vocab = int(math.ceil(vocab / 128) * 128)
    big, small = shapes(vocab)
    unknown = [m for m in methods if m not in small]
    if unknown:
        raise SystemExit(f"growth_vs_scratch.py: error: --methods {','.join(unknown)}: no schedule; known: "
                         f"{', '.join(small)}")
    budget = scratch_steps * flops_per_token(big) * SEQ * BATCH
    log(f"budget {budget:.3g} FLOPs = {scratch_steps} steps of {big.num_layers} x {big.hidden_size} "
        f"(batch {BATCH} x {SEQ} tokens); small models train {small_fraction:.0%} of it; {seeds} seeds")
    runs = []
    for seed in range(1, seeds + 1):
        runs.append(run_schedule("scratch", seed, big, None, budget, small_fraction, tokens, lr, warmup,
                                 eval_interval, ramp, log))
        for name in methods:
            runs.append(run_schedule(name, seed, big, small[name], budget, small_fraction, tokens, lr, warmup,
                                     eval_interval, ramp, log))
    summary = summarise(runs, methods, list(range(1, seeds + 1)))
    result = {"methods": {m: summary[m] for m in methods}, "scratch": summary["scratch"], "budget_flops": budget,
              "shapes": {"big": f"{big.num_layers} x {big.hidden_size}",
                         **{m: f"{small[m].num_layers} x {small[m].hidden_size}" for m in methods}},
              "settings": {"scratch_steps": scratch_steps, "small_fraction": small_fraction, "lr": lr,
                           "warmup": warmup, "ramp": ramp, "batch": BATCH, "seq": SEQ, "data": data_prefixes},
              "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}",
              "date": time.strftime("%Y-%m-%d %H:%M")}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, "runs.json"), "w") as f:
        json.dump(runs, f)
    plot(runs, methods, image or os.path.join(out, "growth_methods.png"),
         f"Growth operators vs scratch at equal compute (tiny FLM, CPU, {seeds} seeds)")
    text = table(summary, methods, seeds)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    log(text)
    return result
