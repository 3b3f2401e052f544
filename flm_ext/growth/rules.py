"""The MSG mask rules, written once: which coordinates each grown axis adds and where its mask acts.

Both users read these tables, so they cannot disagree: the trainer's masks (masks.py: forward hooks
on megatron's modules while a growth ramps) and the export (flm_ext/export/convert.py: the masks
folded into the weights of a checkpoint saved mid-ramp). docs/FLM.md section 3 gives the equations.

A mask is 1 on old coordinates and lambda on new ones (`mask_values`). An axis (`AxisRule`) names
the FLMConfig field with its size and its sites: the modules whose output the mask multiplies
(module paths in megatron's GPTModel; `decoder.layers.<rest>` means that module in every layer)
and, for the export, the checkpoint tensors and dimension that the same scaling folds into (a
linear's output rows, its bias included; the embedding's hidden columns). Two kinds of site are
more than a scaling, and the export keeps them as config fields: a LayerNorm (`norm`) also takes
mask-weighted statistics, and a new layer (`gate`) returns lambda * Block(h) + (1 - lambda) * h.

Adding an axis is one `AxisRule` and `register_axis(rule)`; `GrowthState.from_plan` records a change
for every registered axis, and both users pick up its sites.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from flm_ext.growth.operators import GrowthError

SITE_KINDS = ("scale", "norm", "gate")
LAYERS = "decoder.layers."  # a site path with this prefix is repeated in every layer
EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"


@dataclass(frozen=True)
class Site:
    """One place a mask acts. `fold`: (checkpoint key, dim) pairs whose entries along `dim` the
    mask multiplies to the same effect (empty for a gate)."""

    module: str
    kind: str = "scale"
    fold: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        if self.kind not in SITE_KINDS:
            raise GrowthError(f"mask site {self.module}: kind={self.kind!r} must be one of {SITE_KINDS}")


def _linear(path: str) -> Site:
    """A linear layer's output (bias included): its weight's and bias's rows."""
    return Site(path, fold=((f"{path}.weight", 0), (f"{path}.bias", 0)))


def _norm(path: str) -> Site:
    return Site(path, "norm", fold=((f"{path}.weight", 0), (f"{path}.bias", 0)))


@dataclass(frozen=True)
class AxisRule:
    """One axis growth can add to. `unit(cfg)`: output coordinates per unit of the axis at the
    sites (a head owns 3 x head_dim QKV rows, grouped per head); `positions(plan)`: where the new
    units go (None: appended at the end of the axis)."""

    name: str
    size_field: str
    sites: tuple[Site, ...]
    unit: Callable[[object], int] = lambda cfg: 1
    positions: Callable[[object], tuple[int, ...] | None] = lambda plan: None

    def has(self, kind: str) -> bool:
        return any(site.kind == kind for site in self.sites)

    @property
    def per_coordinate(self) -> bool:
        """Whether its mask is a vector over the axis (a scaling or LayerNorm site), not only layer gates."""
        return self.has("scale") or self.has("norm")


_AXES: dict[str, AxisRule] = {}


def register_axis(rule: AxisRule) -> AxisRule:
    if rule.name in _AXES:
        raise GrowthError(f"growth axis {rule.name!r} is registered twice")
    _AXES[rule.name] = rule
    return rule


def axis_rule(name: str) -> AxisRule:
    if name not in _AXES:
        raise GrowthError(f"unknown growth axis {name!r}; known: {', '.join(_AXES)}")
    return _AXES[name]


def axis_rules() -> tuple[AxisRule, ...]:
    return tuple(_AXES.values())


def mask_values(is_new: torch.Tensor, lam: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The mask over an axis: 1 where `is_new` is False, `lam` where it is True."""
    return torch.ones(is_new.shape, dtype=dtype, device=is_new.device).masked_fill_(is_new.bool(), lam)


def fold_table(axes) -> dict[str, tuple[str, int]]:
    """checkpoint key -> (axis, dim) for the axes named in `axes` (those that grew): what the export
    multiplies into each tensor. A key two sites fold into would be scaled twice: refused."""
    out: dict[str, tuple[str, int]] = {}
    for name in axes:
        for site in axis_rule(name).sites:
            for key, dim in site.fold:
                if key in out:
                    raise GrowthError(f"mask rules fold both {out[key][0]} and {name} into {key}")
                out[key] = (name, dim)
    return out


# --- FLM's axes ----------------------------------------------------------------------------------
# The hidden mask c multiplies the embedding output, every sub-layer output before the residual
# add, and every LayerNorm (mask-weighted statistics, output times c). The final LayerNorm's
# output scaling folds into the output layer's input columns; with tied embeddings that is the
# embedding's columns, which the embedding site already scales (the export then writes no output
# layer), so c is applied once on each side.
register_axis(AxisRule("hidden", "hidden_size", (
    Site("embedding", fold=((EMBEDDING, 1),)),
    _norm(LAYERS + "input_layernorm"),
    _linear(LAYERS + "self_attention.linear_proj"),
    _norm(LAYERS + "pre_mlp_layernorm"),
    _linear(LAYERS + "mlp.linear_fc2"),
    Site("decoder.final_layernorm", "norm", fold=((OUTPUT, 1),)),
)))
register_axis(AxisRule("heads", "num_attention_heads", (_linear(LAYERS + "self_attention.linear_qkv"),),
                       unit=lambda cfg: 3 * cfg.head_dim))
register_axis(AxisRule("ffn", "ffn_hidden_size", (_linear(LAYERS + "mlp.linear_fc1"),)))
register_axis(AxisRule("layers", "num_layers", (Site("decoder.layers", "gate"),),
                       positions=lambda plan: plan.new_layers))

__all__ = ["Site", "AxisRule", "register_axis", "axis_rule", "axis_rules", "mask_values", "fold_table",
           "SITE_KINDS"]
