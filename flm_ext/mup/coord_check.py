"""Coordinate check: does µP make activation sizes independent of width?

µP's claim (Yang & Hu, Tensor Programs V) is that every activation coordinate stays O(1) during
training as width grows, so hyper-parameters tuned at a small width transfer. The check: build the
FLM model at several widths (head size fixed, heads grow), take a few AdamW steps with the
project's own optimizer (µP LR groups) and scheduler on one fixed batch, and record the mean
|coordinate| of each layer's output. Under µP the curves are flat in width; in the standard
parametrisation (SP, µP off) the same LR makes them grow with width, roughly linearly for the
logits and the hidden-matrix outputs, because an Adam update changes every weight by ~LR and a
fan-in-sized sum of such changes grows with the fan-in.

Runs in-process on a single-process gloo world (it initialises one if there is none).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

# The layers whose outputs are recorded (for layer i of the model: attn.i, mlp.i, block.i).
FIXED_KEYS = ("embedding", "final_norm", "logits")


@dataclass
class CoordCheckResult:
    widths: list[int]
    use_mup: bool
    steps: list[int]  # the step numbers recorded (0 = before any update)
    # stats[key][step_index][width_index] = mean |coordinate|, averaged over seeds
    stats: dict[str, list[list[float]]] = field(default_factory=dict)

    def slopes(self, step: int | None = None) -> dict[str, float]:
        """Per layer: slope of log2(mean |coord|) against log2(width) at `step` (default: last).

        0 means flat; 1 means the size doubles when the width doubles."""
        index = -1 if step is None else self.steps.index(step)
        x = np.log2(np.array(self.widths, dtype=np.float64))
        out = {}
        for key, per_step in self.stats.items():
            y = np.log2(np.array(per_step[index], dtype=np.float64))
            out[key] = float(np.polyfit(x, y, 1)[0])
        return out


def _ensure_process_group() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    if dist.is_initialized() and parallel_state.model_parallel_is_initialized():
        return
    from flm_ext.config import ParallelConfig
    from flm_ext.runtime import initialize_distributed

    if not dist.is_initialized():
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    initialize_distributed(ParallelConfig(), seed=1234, rank=0, world_size=1)


def _register_hooks(model, record: dict) -> list:
    def hook(key):
        def fn(module, _inputs, output):
            tensor = output[0] if isinstance(output, tuple) else output
            # The final norm carries µP's output multiplier output_mult/m (a scalar applied to the
            # logits, not a coordinate size): record the normalised hidden state without it.
            scale = getattr(module, "output_scale", 1.0) if key == "final_norm" else 1.0
            record[key] = tensor.detach().abs().mean().item() / scale
        return fn

    handles = [model.embedding.register_forward_hook(hook("embedding")),
               model.decoder.final_layernorm.register_forward_hook(hook("final_norm")),
               model.output_layer.register_forward_hook(hook("logits"))]
    for i, layer in enumerate(model.decoder.layers):
        handles.append(layer.self_attention.register_forward_hook(hook(f"attn.{i}")))
        handles.append(layer.mlp.register_forward_hook(hook(f"mlp.{i}")))
        handles.append(layer.register_forward_hook(hook(f"block.{i}")))
    return handles


def _one_width(width: int, *, use_mup: bool, base_width: int, head_dim: int, num_layers: int, vocab_size: int,
               seq_length: int, batch_size: int, lr: float, init_std: float, output_mult: float, steps: int,
               seed: int, adam_eps: float) -> dict[str, list[float]]:
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from flm_ext.config import FLMConfig
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.runtime import set_seed
    from flm_ext.training.engine import build_optimizer, train_step, wrap_ddp
    from flm_ext.training.optim import OptimConfig

    model_cfg = FLMConfig(num_layers=num_layers, hidden_size=width, num_attention_heads=width // head_dim,
                          seq_length=seq_length, vocab_size=vocab_size, init_method_std=init_std,
                          use_mup=use_mup, mup_base_width=base_width, mup_output_mult=output_mult)
    set_seed(seed)
    chunks = build_model_chunks(model_cfg)
    model = wrap_ddp(chunks)
    # No weight decay and no clipping: the check is about the parametrisation, not the regulariser.
    optimizer = build_optimizer(model, model_cfg, OptimConfig(lr=lr, min_lr=lr, weight_decay=0.0, clip_grad=0.0,
                                                           adam_eps=adam_eps))
    OptimizerParamScheduler(optimizer, init_lr=lr, max_lr=lr, min_lr=lr, lr_warmup_steps=0, lr_decay_steps=1,
                            lr_decay_style="constant", start_wd=0.0, end_wd=0.0, wd_incr_steps=1,
                            wd_incr_style="constant")
    # One fixed batch with structure to learn (a noisy periodic sequence), the same at every width.
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(0, vocab_size, (batch_size, 8), generator=gen)
    tokens = base.repeat(1, seq_length // 8 + 2)[:, :seq_length + 1]
    noise = torch.rand(tokens.shape, generator=gen) < 0.1
    tokens = torch.where(noise, torch.randint(0, vocab_size, tokens.shape, generator=gen), tokens)
    batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
             "loss_mask": torch.ones(batch_size, seq_length),
             "position_ids": torch.arange(seq_length).unsqueeze(0).expand(batch_size, -1)}
    record: dict[str, float] = {}
    history: dict[str, list[float]] = {}
    handles = _register_hooks(chunks[0], record)
    try:
        for step in range(steps + 1):
            # The forward of step t (t updates done) is recorded; after the last record, stop.
            if step == steps:
                with torch.no_grad():
                    chunks[0](batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
            else:
                train_step(model, optimizer, iter([batch]), num_microbatches=1, seq_length=seq_length,
                           micro_batch_size=batch_size)
            for key, value in record.items():
                history.setdefault(key, []).append(value)
    finally:
        for handle in handles:
            handle.remove()
    return history


def run_coord_check(widths: list[int], *, use_mup: bool, base_width: int | None = None, head_dim: int = 8,
                    num_layers: int = 2, vocab_size: int = 256, seq_length: int = 32, batch_size: int = 4,
                    lr: float = 1e-3, init_std: float = 0.02, output_mult: float = 1.0, steps: int = 8, adam_eps: float = 1e-8,
                    seeds: tuple[int, ...] = (1, 2), progress=None) -> CoordCheckResult:
    """Mean |coordinate| per layer and step (0..steps) for each width, averaged over seeds.

    `base_width` defaults to the smallest width, where µP and SP then differ only in the
    attention scale (1/d vs 1/sqrt(d)) and the output multiplier."""
    _ensure_process_group()
    base_width = base_width or min(widths)
    result = CoordCheckResult(widths=list(widths), use_mup=use_mup, steps=list(range(steps + 1)))
    per_width = []
    for width in widths:
        if width % head_dim:
            raise ValueError(f"width {width} is not a multiple of head_dim {head_dim}")
        runs = [_one_width(width, use_mup=use_mup, base_width=base_width, head_dim=head_dim, num_layers=num_layers,
                           vocab_size=vocab_size, seq_length=seq_length, batch_size=batch_size, lr=lr,
                           init_std=init_std, output_mult=output_mult, steps=steps, seed=seed,
                           adam_eps=adam_eps) for seed in seeds]
        per_width.append({key: np.mean([r[key] for r in runs], axis=0).tolist() for key in runs[0]})
        if progress:
            progress(f"coord check ({'µP' if use_mup else 'SP'}): width {width} done")
    for key in per_width[0]:
        result.stats[key] = [[per_width[w][key][t] for w in range(len(widths))] for t in range(steps + 1)]
    return result


def plot_coord_check(results: list[CoordCheckResult], path: str, *, steps_to_show: list[int] | None = None) -> None:
    """One row per parametrisation (µP, SP), one column per recorded step: mean |coord| vs width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps_to_show = steps_to_show or sorted({0, results[0].steps[len(results[0].steps) // 2], results[0].steps[-1]})
    fig, axes = plt.subplots(len(results), len(steps_to_show), figsize=(4.2 * len(steps_to_show), 3.6 * len(results)),
                             squeeze=False, sharey="row")
    for row, result in enumerate(results):
        slopes = result.slopes()
        for col, step in enumerate(steps_to_show):
            ax = axes[row][col]
            index = result.steps.index(step)
            for i, (key, per_step) in enumerate(result.stats.items()):
                ax.plot(result.widths, per_step[index], "o-", ms=3, color=f"C{i % 10}",
                        label=f"{key} (slope {slopes[key]:+.2f})" if col == len(steps_to_show) - 1 else key)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            name = "µP" if result.use_mup else "SP (µP off)"
            ax.set_title(f"{name}: step {step}", fontsize=10)
            ax.set_xlabel("width")
            if col == 0:
                ax.set_ylabel("mean |coordinate|")
            ax.grid(True, which="both", alpha=0.3)
        axes[row][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5),
                             title="slope vs width (last step)", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(mup: CoordCheckResult, sp: CoordCheckResult, *, flat: float = 0.25, drift: float = 0.5) -> tuple[bool, str]:
    """(passed, explanation): µP's largest |slope| at the last step must be <= `flat` and SP's
    largest slope >= `drift` (with the same LR, SP's activations must visibly grow with width)."""
    mup_slopes, sp_slopes = mup.slopes(), sp.slopes()
    worst_mup = max(mup_slopes, key=lambda k: abs(mup_slopes[k]))
    worst_sp = max(sp_slopes, key=lambda k: sp_slopes[k])
    ok = abs(mup_slopes[worst_mup]) <= flat and sp_slopes[worst_sp] >= drift
    text = (f"µP: largest |slope| {mup_slopes[worst_mup]:+.3f} ({worst_mup}), limit {flat}; "
            f"SP: largest slope {sp_slopes[worst_sp]:+.3f} ({worst_sp}), must be >= {drift}")
    return ok, text


__all__ = ["CoordCheckResult", "run_coord_check", "plot_coord_check", "verdict"]
