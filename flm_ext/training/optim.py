"""The optimizer's settings, with their flags (Megatron's names), in a module of their own so that
the engine, tools and tests build an optimizer without importing the training CLI
(`arguments.py` gathers this config into `TrainConfig` and generates its flags)."""
from __future__ import annotations

from dataclasses import dataclass

from flm_ext.flags import flag


@dataclass(frozen=True)
class OptimConfig:
    """AdamW as FLM-101B used it: betas (0.9, 0.95), weight decay 0.1, clipping 1.0."""

    lr: float = flag(3e-4)
    min_lr: float = flag(0.0)
    weight_decay: float = flag(0.1)
    adam_beta1: float = flag(0.9)
    adam_beta2: float = flag(0.95)
    adam_eps: float = flag(1e-8)
    clip_grad: float = flag(1.0)
    use_distributed_optimizer: bool = flag(False)
