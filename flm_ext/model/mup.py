"""µP (maximal update parametrisation) rules that live outside the model's forward.

Inside the model (see config.to_transformer_config and model/flm_model.py): hidden matrices are
initialised with std sigma/sqrt(m), embeddings with sigma, attention scores use 1/head_dim and
the logits are multiplied by output_mult/m. Here: Adam's learning rate for hidden matrices is
eta/m; embeddings (incl. the tied output), biases and LayerNorm keep eta (docs/FLM.md section 5).
"""
from __future__ import annotations

import torch

from flm_ext.config import FLMConfig


def is_hidden_matrix(param: torch.nn.Parameter, name: str) -> bool:
    """Matrix-like weights whose fan-in grows with width: QKV, attention output, FC1, FC2."""
    return param.dim() == 2 and "embedding" not in name and "output_layer" not in name


def mup_optimizer_overrides(model: FLMConfig, lr: float, min_lr: float) -> dict:
    """megatron-core `config_overrides` entries giving hidden matrices LR eta/m (empty without µP)."""
    if not model.use_mup or model.mup_width_mult == 1.0:
        return {}
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate

    m = model.mup_width_mult
    key = ParamKey(with_name_predicate=ParamWithNamePredicate(name="mup_hidden_matrix", fn=is_hidden_matrix))
    # megatron-core 0.16's scheduler reads max_lr/min_lr and ignores lr_mult; lr_mult is set only
    # because megatron matches saved and current param groups by (wd_mult, lr_mult, ...) when it
    # loads an optimizer: without it the µP group is indistinguishable from the default one.
    return {key: {"max_lr": lr / m, "min_lr": min_lr / m, "lr_mult": 1.0 / m}}
