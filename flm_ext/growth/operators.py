"""MSG growth operators: pure functions on whole (global) tensors, no process group needed.

Masked Structural Growth (docs/FLM.md section 3) enlarges a model by copying every old tensor into
the leading block of a larger one and filling the rest with a fresh init; the function is
preserved by runtime masks (see `masks.py`), not by the init. This module is the tensor half:

- `GrowthPlan(old, new, ...)` checks that `new` only adds hidden dims, attention heads (head size
  fixed), FFN units and layers, and says where each new layer goes (`layer_sources`).
- `grow_width(key, tensor, plan, role)` grows one tensor that has no layer axis, or one layer's
  slice of a stacked `decoder.layers.*` tensor; `grow_layer` produces one layer of the grown stack
  from the old stack (a tensor or a loader, so a checkpoint tool can stream layer by layer);
  `grow_tensor` / `grow_state_dict` do whole tensors / dicts.

Keys are megatron's ShardedTensor keys, as in `flm_ext.model.global_weights` and torch_dist
checkpoints: layer tensors are stacked on axis 0 ([L, ...]). Why "leading block" suffices for
every tensor: new hidden dims, heads and FFN units are appended at the end of their axis, and
megatron's QKV rows are grouped per head ([q_h, k_h, v_h] for head h), so old heads' rows stay a
prefix of the grown QKV.

`role` says what a tensor holds: "param" (model weights or the optimizer's fp32 main copy: new
entries get the init of the *grown* config) or "exp_avg" / "exp_avg_sq" (Adam moments: old slice
copied, new entries 0, layers added by depth growth start empty even when they copy weights).
Adam's step count is not a tensor of the model's shape: keep it as it is. New weights are drawn
from a generator seeded by (plan.seed, key, new layer index), so the bf16 weight and its fp32
main copy, grown in separate calls and in any order, get the same values.

µP: the logits are multiplied by `mup_output_mult / m` with m = hidden / base width, so widening
changes m and would scale the logits. We keep the grown config's own m (µP-correct init std and
LR for the new width, and the released FLM-101B config's m = 40) and fold the ratio of the old to
the new logits scale into the final LayerNorm's gain and bias (`GrowthPlan.logits_rescale`): the
output layer is linear and bias-free, so this preserves the logits exactly. Adam moments of those
two tensors are rescaled to match (gradients scale by 1/k, squared ones by 1/k^2). Setting the
grown config's `mup_width_mult_override` to the old m instead gives a rescale of exactly 1.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import torch

from flm_ext.config import FLMConfig, validate

LAYER_PREFIX = "decoder.layers."
ROLES = ("param", "exp_avg", "exp_avg_sq")
DEPTH_INITS = ("stack", "random")
DEPTH_PLACEMENTS = ("top", "interleave")


class GrowthError(ValueError):
    """A growth that cannot be done; the message names the offending field or key."""


# Every FLM tensor: the kind of each axis (layer axis excluded) and how new entries are initialised.
# Axis kinds: hidden (residual stream), qkv (3 x heads x head size, grouped per head), attn
# (heads x head size), ffn, vocab. Inits: matrix (std sigma/sqrt(m)), output (megatron's scaled init
# for the projections back into the residual stream), embedding (sigma), one, zero.
_TENSORS: dict[str, tuple[tuple[str, ...], str]] = {
    "embedding.word_embeddings.weight": (("vocab", "hidden"), "embedding"),
    "output_layer.weight": (("vocab", "hidden"), "matrix"),
    "decoder.final_layernorm.weight": (("hidden",), "one"),
    "decoder.final_layernorm.bias": (("hidden",), "zero"),
    "decoder.layers.input_layernorm.weight": (("hidden",), "one"),
    "decoder.layers.input_layernorm.bias": (("hidden",), "zero"),
    "decoder.layers.self_attention.linear_qkv.weight": (("qkv", "hidden"), "matrix"),
    "decoder.layers.self_attention.linear_qkv.bias": (("qkv",), "zero"),
    "decoder.layers.self_attention.linear_proj.weight": (("hidden", "attn"), "output"),
    "decoder.layers.self_attention.linear_proj.bias": (("hidden",), "zero"),
    "decoder.layers.pre_mlp_layernorm.weight": (("hidden",), "one"),
    "decoder.layers.pre_mlp_layernorm.bias": (("hidden",), "zero"),
    "decoder.layers.mlp.linear_fc1.weight": (("ffn", "hidden"), "matrix"),
    "decoder.layers.mlp.linear_fc1.bias": (("ffn",), "zero"),
    "decoder.layers.mlp.linear_fc2.weight": (("hidden", "ffn"), "output"),
    "decoder.layers.mlp.linear_fc2.bias": (("hidden",), "zero"),
}
_FINAL_NORM = ("decoder.final_layernorm.weight", "decoder.final_layernorm.bias")

# Fields that define what the weights compute and that growth must not change.
_FIXED_FIELDS = ("vocab_size", "position_embedding", "rotary_base", "xpos_scale_base", "layernorm_epsilon",
                 "share_embeddings_and_output_weights", "use_mup", "mup_input_mult")
_GROWN_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size")


def is_growable(key: str) -> bool:
    """Whether `key` is an FLM model tensor these operators know (else keep it unchanged or fail)."""
    return key in _TENSORS


def is_layer_key(key: str) -> bool:
    """Whether the tensor is stacked over layers on axis 0 ([L, ...])."""
    return key.startswith(LAYER_PREFIX)


def split_layer_name(name: str, layer_offset: int = 0) -> tuple[str, int | None]:
    """A module parameter name -> (global key, global layer index or None).

    'decoder.layers.3.mlp.linear_fc1.weight' -> ('decoder.layers.mlp.linear_fc1.weight', 3 + offset);
    names outside the layer stack come back unchanged with None. `layer_offset` is the pipeline
    stage's first global layer (names count layers within the stage).
    """
    name = name[len("module."):] if name.startswith("module.") else name
    if not name.startswith(LAYER_PREFIX):
        return name, None
    index, rest = name[len(LAYER_PREFIX):].split(".", 1)
    return LAYER_PREFIX + rest, int(index) + layer_offset


def _output_scale(cfg: FLMConfig) -> float:
    return cfg.mup_output_mult / cfg.mup_width_mult if cfg.use_mup else 1.0


@dataclass(frozen=True)
class GrowthPlan:
    """One growth step from config `old` to config `new`.

    depth_init: "stack" (a new layer copies an old one, as StackBERT / FLM's 51B -> 101B) or
    "random" (fresh init). depth_placement: "top" (new layers after the old stack; with stacking
    they copy the top `n` old layers in order, the whole stack repeated when n > L) or
    "interleave" (each new layer right after the old layer it copies; with n new layers spread
    evenly over the L old ones, i.e. old layer i is followed by floor((i+1)n/L) - floor(in/L)).
    The new layers are gated to identity at lambda = 0 either way, so placement only matters for
    what the model becomes as the gate opens.
    """

    old: FLMConfig
    new: FLMConfig
    depth_init: str = "stack"
    depth_placement: str = "top"
    seed: int = 0

    def __post_init__(self):
        validate(self.old)
        validate(self.new)
        if self.depth_init not in DEPTH_INITS:
            raise GrowthError(f"depth_init={self.depth_init!r} must be one of {DEPTH_INITS}")
        if self.depth_placement not in DEPTH_PLACEMENTS:
            raise GrowthError(f"depth_placement={self.depth_placement!r} must be one of {DEPTH_PLACEMENTS}")
        for field in _FIXED_FIELDS:
            if getattr(self.old, field) != getattr(self.new, field):
                raise GrowthError(f"growth cannot change {field}: {getattr(self.old, field)!r} -> "
                                  f"{getattr(self.new, field)!r}")
        for field in _GROWN_FIELDS:
            before, after = getattr(self.old, field), getattr(self.new, field)
            if after < before:
                raise GrowthError(f"growth cannot shrink {field}: {before} -> {after}")
        if self.old.head_dim != self.new.head_dim:
            raise GrowthError(f"growth keeps the head size fixed: head_dim {self.old.head_dim} -> "
                              f"{self.new.head_dim} (hidden_size={self.new.hidden_size}, "
                              f"num_attention_heads={self.new.num_attention_heads}, "
                              f"kv_channels={self.new.kv_channels})")

    # --- depth --------------------------------------------------------------------------------
    def layer_sources(self) -> tuple[tuple[int | None, bool], ...]:
        """For each grown layer: (old layer it is built from or None, whether it is new)."""
        old_n, added = self.old.num_layers, self.new.num_layers - self.old.num_layers
        stack = self.depth_init == "stack"
        if self.depth_placement == "top":
            cycle = list(range(old_n)) * math.ceil(added / old_n)
            copies = cycle[len(cycle) - added:] if added else []
            return tuple([(i, False) for i in range(old_n)] + [(src if stack else None, True) for src in copies])
        out: list[tuple[int | None, bool]] = []
        for i in range(old_n):
            out.append((i, False))
            followers = (i + 1) * added // old_n - i * added // old_n
            out.extend([(i if stack else None, True)] * followers)
        return tuple(out)

    @property
    def new_layers(self) -> tuple[int, ...]:
        """Indices (0-based, global) of the layers that growth adds."""
        return tuple(j for j, (_, is_new) in enumerate(self.layer_sources()) if is_new)

    # --- width --------------------------------------------------------------------------------
    @property
    def logits_rescale(self) -> float:
        """Factor on the final LayerNorm's gain and bias that keeps the logits scale (1 without µP)."""
        return _output_scale(self.old) / _output_scale(self.new)

    def axis_sizes(self, cfg: FLMConfig) -> dict[str, int]:
        return {"hidden": cfg.hidden_size, "attn": cfg.attention_width, "qkv": 3 * cfg.attention_width,
                "ffn": cfg.ffn_hidden_size, "vocab": cfg.vocab_size}

    def shapes(self, key: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(old, new) shape of one layer's slice (or of the whole tensor for non-layer keys)."""
        axes, _ = _spec(key)
        old, new = self.axis_sizes(self.old), self.axis_sizes(self.new)
        return tuple(old[a] for a in axes), tuple(new[a] for a in axes)

    def init_std(self, key: str) -> float:
        """Std of the grown config's init for a matrix key (µP: sigma/sqrt(m) for hidden matrices)."""
        _, init = _spec(key)
        cfg = self.new
        hidden_std = cfg.init_method_std / math.sqrt(cfg.mup_width_mult)
        if init == "matrix":
            return hidden_std
        if init == "output":
            return hidden_std / math.sqrt(2.0 * cfg.num_layers)
        if init == "embedding":
            return cfg.init_method_std
        raise GrowthError(f"{key} is not a matrix (init {init!r})")


def _spec(key: str) -> tuple[tuple[str, ...], str]:
    if key not in _TENSORS:
        raise GrowthError(f"no growth rule for tensor {key!r}; known: {sorted(_TENSORS)}")
    return _TENSORS[key]


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise GrowthError(f"role={role!r} must be one of {ROLES}")


def _generator(plan: GrowthPlan, key: str, layer: int | None) -> torch.Generator:
    mixed = (plan.seed * 1_000_003 + zlib.crc32(key.encode()) * 8191 + (layer if layer is not None else -1) + 1)
    return torch.Generator().manual_seed(mixed % (2 ** 63))


def _init_fill(key: str, plan: GrowthPlan, layer: int | None, role: str) -> Callable[[torch.Tensor], object]:
    """The init of new entries, as an in-place fill of a block: the spec's init for "param" (zeros,
    ones, or N(0, init_std) drawn in float32 from the (seed, key, layer) generator), zeros for Adam
    moments. One generator per call: blocks filled in turn continue its stream."""
    _, init = _spec(key)
    if role != "param" or init == "zero":
        return lambda block: block.fill_(0.0)
    if init == "one":
        return lambda block: block.fill_(1.0)
    generator, std = _generator(plan, key, layer), plan.init_std(key)

    def draw(block: torch.Tensor) -> None:  # a block may be a strided view of another dtype
        if block.dtype == torch.float32 and block.is_contiguous():
            block.normal_(0.0, std, generator=generator)
        else:
            block.copy_(torch.empty(block.shape, dtype=torch.float32).normal_(0.0, std, generator=generator))

    return draw


def fresh_init(key: str, plan: GrowthPlan, layer: int | None = None, dtype: torch.dtype = torch.float32,
               role: str = "param") -> torch.Tensor:
    """A new tensor of the grown shape: the spec's init for "param", zeros for Adam moments."""
    _check_role(role)
    _, shape = plan.shapes(key)
    out = torch.empty(shape, dtype=dtype)
    _init_fill(key, plan, layer, role)(out)
    return out


def _around(out: torch.Tensor, old_shape: tuple[int, ...], fill: Callable[[torch.Tensor], object]) -> None:
    """Apply `fill` to the parts of `out` outside its leading `old_shape` block: one block per grown
    dimension d (the old extent along the dimensions before d, the new part of d, all of the
    dimensions after), in that order. The old block, overwritten next, is neither filled nor
    drawn: drawing its random numbers was the largest single CPU cost of an offline growth. The
    new entries have the same distribution as a draw of the whole tensor; other numbers than
    before this rule."""
    for dim, n in enumerate(old_shape):
        if out.shape[dim] != n:
            fill(out[tuple(slice(0, m) for m in old_shape[:dim]) + (slice(n, None),)])


@torch.no_grad()
def grow_width(key: str, tensor: torch.Tensor, plan: GrowthPlan, role: str = "param",
               layer: int | None = None) -> torch.Tensor:
    """Grow one tensor (or one layer's slice of a stacked one) to the new widths.

    The old tensor lands in the leading block; only the new entries around it get `fresh_init`'s
    init (`_around`). `layer` is the grown model's layer index (it seeds the init, so different
    layers get different new weights).
    """
    _check_role(role)
    old_shape, new_shape = plan.shapes(key)
    if tuple(tensor.shape) != old_shape:
        layered = " (one layer's slice: index the stacked [L, ...] tensor first)" if is_layer_key(key) else ""
        raise GrowthError(f"{key}: shape {tuple(tensor.shape)} is not the old config's {old_shape}{layered}")
    out = torch.empty(new_shape, dtype=tensor.dtype)
    _around(out, old_shape, _init_fill(key, plan, layer, role))
    old = tensor
    k = plan.logits_rescale
    if key in _FINAL_NORM and k != 1.0:
        # µP: the old logits scale moves into the final norm; moments follow the gradients (1/k, 1/k^2).
        factor = {"param": k, "exp_avg": 1.0 / k, "exp_avg_sq": 1.0 / k ** 2}[role]
        old = (tensor.double() * factor).to(tensor.dtype)
    out[tuple(slice(0, n) for n in old_shape)] = old
    return out


def layer_source(key: str, plan: GrowthPlan, layer: int) -> tuple[int | None, bool]:
    """(old layer that grown layer `layer` is built from or None, whether it is new), checked."""
    if not is_layer_key(key):
        raise GrowthError(f"{key} is not stacked over layers; use grow_width")
    sources = plan.layer_sources()
    if not 0 <= layer < len(sources):
        raise GrowthError(f"layer={layer} is outside the grown model's {len(sources)} layers")
    return sources[layer]


def old_layer(old_layers: "OldLayers", index: int) -> torch.Tensor:
    return old_layers(index) if callable(old_layers) else old_layers[index]


OldLayers = Union[torch.Tensor, Sequence[torch.Tensor], Callable[[int], torch.Tensor]]


@torch.no_grad()
def grow_layer(key: str, old_layers: OldLayers, plan: GrowthPlan, layer: int, role: str = "param",
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Layer `layer` of the grown stack for a `decoder.layers.*` key.

    `old_layers` gives the old layers: the stacked [L, ...] tensor, a sequence of slices, or a
    function old index -> slice (a checkpoint tool can load just the slice needed; it is not
    called for freshly initialised layers). Old layers are widened; a new layer is a widened copy
    of its source ("stack", role "param"), a fresh init ("random"), or zeros (Adam moments: new
    layers start with empty optimizer state).
    """
    _check_role(role)
    src, is_new = layer_source(key, plan, layer)
    if is_new and (role != "param" or src is None):
        if dtype is None:
            dtype = _first_old(old_layers).dtype
        return fresh_init(key, plan, layer, dtype=dtype, role=role)
    return grow_width(key, old_layer(old_layers, src), plan, role, layer=layer)


def _first_old(old_layers: OldLayers) -> torch.Tensor:
    return old_layers(0) if callable(old_layers) else old_layers[0]


def grow_tensor(key: str, tensor: torch.Tensor, plan: GrowthPlan, role: str = "param") -> torch.Tensor:
    """A whole global tensor grown (layer stacks layer by layer)."""
    if not is_layer_key(key):
        return grow_width(key, tensor, plan, role)
    if tensor.dim() == 0 or tensor.shape[0] != plan.old.num_layers:
        raise GrowthError(f"{key}: stacked tensor of shape {tuple(tensor.shape)} does not have the old "
                          f"config's {plan.old.num_layers} layers on axis 0")
    return torch.stack([grow_layer(key, tensor, plan, j, role) for j in range(plan.new.num_layers)])


def grow_state_dict(state: Mapping[str, torch.Tensor], plan: GrowthPlan, role: str = "param"
                    ) -> dict[str, torch.Tensor]:
    """Every tensor of a global state dict grown (all keys must be known FLM tensors)."""
    return {key: grow_tensor(key, tensor, plan, role) for key, tensor in state.items()}


__all__ = ["GrowthPlan", "GrowthError", "ROLES", "is_growable", "is_layer_key", "split_layer_name",
           "fresh_init", "grow_width", "grow_layer", "grow_tensor", "grow_state_dict"]
