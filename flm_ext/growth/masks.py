"""MSG runtime masks in the FLM model, and the growth record a grown checkpoint carries.

After `operators.py` has grown the weights, the grown model computes the old function only while
its new coordinates are masked (docs/FLM.md section 3). With lambda the mask value of every new
coordinate (old ones have 1):

- hidden dims: the embedding output and each sub-layer output (attention and MLP, bias included,
  before the residual add) are multiplied by the hidden mask c; every LayerNorm (both per layer
  and the final one) uses mask-weighted statistics and multiplies its output by c;
- heads: the new heads' q, k and v (QKV output rows) are multiplied by lambda;
- FFN units: fc1's output (bias included) is multiplied by the FFN mask before GeLU (GeLU(0) = 0);
- layers: a new layer returns lambda * Block(h) + (1 - lambda) * h.

At lambda = 0 the new dims of the residual stream stay exactly 0, so the new weights that read
them see zeros and the old coordinates compute what they computed before growth.

Where each mask acts is written once, in rules.py (the export folds the same rules into the
weights); this module turns those sites into hooks. `GrowthState` (state.py) records which
coordinates are new and the ramp. The trainer calls `apply_growth_schedule(chunks, state, iteration)`
before each step: lambda rises linearly from 0 (first step after growth) to 1 after
`ramp_steps` steps, and then the masks are dropped so the model runs at full speed.

The masks are forward hooks on megatron's own modules (embedding, QKV / fc1 / output
projections, layers) plus a flag in FLM's LayerNorm, installed only while growth is active: a
model that is not growing runs with no hooks and no extra work. They are plain attributes, never
parameters or buffers, so `state_dict()` and `sharded_state_dict()` (checkpoints) do not see
them. Parallelism: hidden dims are never split (under sequence parallelism the sequence is), so
the hidden mask is whole on every rank; QKV rows and fc1 units are split over tensor-parallel
ranks in contiguous blocks, so each rank takes its block of those masks; layers know their
global 1-based `layer_number` under pipeline parallelism.
"""
from __future__ import annotations

from typing import Iterable

import torch

from flm_ext.growth.operators import GrowthError
from flm_ext.growth.rules import LAYERS, Site, axis_rule, mask_values
from flm_ext.growth.state import GrowthState
from flm_ext.model.flm_model import unwrap
from flm_ext.model.norm import FLMLayerNorm


class _Mask:
    """One mask: 1 on old coordinates, lambda on new ones (`new` already sliced to this rank)."""

    def __init__(self, new: torch.Tensor | None, like: torch.Tensor):
        self.new = None if new is None else new.to(device=like.device)
        self.dtype = like.dtype
        self.value: torch.Tensor | float | None = None

    def set(self, lam: float) -> None:
        if self.new is None:  # a layer gate: a scalar
            self.value = float(lam)
        else:
            self.value = mask_values(self.new, lam, self.dtype)


class _Installed:
    def __init__(self, state: GrowthState):
        self.state = state
        self.masks: list[_Mask] = []
        self.handles: list = []
        self.norms: list[tuple[FLMLayerNorm, _Mask]] = []
        self.lam: float | None = None


def _tp_block(new: torch.Tensor, local_size: int) -> torch.Tensor:
    """This tensor-parallel rank's contiguous block of a global per-unit vector."""
    from megatron.core import parallel_state

    rank = parallel_state.get_tensor_model_parallel_rank()
    if local_size * parallel_state.get_tensor_model_parallel_world_size() != new.numel():
        raise GrowthError(f"mask of {new.numel()} units does not split into TP blocks of {local_size}")
    return new[rank * local_size:(rank + 1) * local_size]


def _output_hook(mask: _Mask):
    """Scales a module's output: a tensor (the embedding) or megatron's (output, bias) pair."""
    def hook(_module, _inputs, output):
        m = mask.value
        if isinstance(output, torch.Tensor):
            return output * m
        out, bias = output
        return out * m, (bias * m if bias is not None else None)
    return hook


def _gate_hook(gate: _Mask):
    def hook(_module, args, kwargs, output):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        out, context = output
        lam = gate.value
        return lam * out + (1.0 - lam) * hidden, context
    return hook


def _check_shape(model, state: GrowthState) -> None:
    cfg = model.flm_config
    for change in state.changes:
        name = axis_rule(change.axis).size_field
        if getattr(cfg, name) != change.new:
            raise GrowthError(f"growth state has {name}={change.new} but the model has {getattr(cfg, name)}")


def _modules(model, path: str) -> list[tuple[int | None, torch.nn.Module]]:
    """(global 0-based layer index or None, module) for a rules.py site path on this rank's chunk;
    none where the chunk lacks it (the embedding off the first pipeline stage, the final norm off
    the last)."""
    if path == "decoder.layers":
        return [(layer.layer_number - 1, layer) for layer in model.decoder.layers]  # layer_number: global, 1-based
    if path.startswith(LAYERS):
        return [(layer.layer_number - 1, layer.get_submodule(path[len(LAYERS):])) for layer in model.decoder.layers]
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return []
    return [] if module is None else [(None, module)]


def _attach_site(inst: _Installed, model, site: Site, is_new: torch.Tensor, like: torch.Tensor,
                 shared: _Mask) -> None:
    """Install one rules.py site of one grown axis (`shared`: the whole-axis mask, for unsplit outputs)."""
    for layer, module in _modules(model, site.module):
        if site.kind == "gate":
            if is_new[layer]:
                gate = _Mask(None, like)
                inst.masks.append(gate)
                inst.handles.append(module.register_forward_hook(_gate_hook(gate), with_kwargs=True))
        elif site.kind == "norm":
            if not isinstance(module, FLMLayerNorm):
                raise GrowthError(f"mask site {site.module} is a {type(module).__name__}, not an FLMLayerNorm")
            inst.norms.append((module, shared))
        else:
            mask = shared
            local = getattr(module, "output_size_per_partition", None)  # column-parallel: split over TP
            if local is not None:
                mask = _Mask(_tp_block(is_new, local), like)
                inst.masks.append(mask)
            inst.handles.append(module.register_forward_hook(_output_hook(mask)))


def attach_growth(chunks: Iterable[torch.nn.Module], state: GrowthState, lam: float = 0.0) -> None:
    """Install the masks of `state` in this rank's model chunks (DDP-wrapped or not) at `lam`:
    for every grown axis, its sites as rules.py lists them."""
    for chunk in chunks:
        model = unwrap(chunk)
        if getattr(model, "_flm_growth", None) is not None:
            raise GrowthError("growth masks are already attached; drop_growth_masks first")
        _check_shape(model, state)
        inst = _Installed(state)
        like = next(model.parameters())
        for change in state.changes:
            rule, is_new = axis_rule(change.axis), change.is_new()
            shared = _Mask(is_new, like) if rule.per_coordinate else None
            if shared is not None:
                inst.masks.append(shared)
            for site in rule.sites:
                _attach_site(inst, model, site, is_new, like, shared)
        model._flm_growth = inst
        _set(model, lam)


def _installed(chunks) -> list[torch.nn.Module]:
    models = [unwrap(c) for c in chunks]
    if not models or any(getattr(m, "_flm_growth", None) is None for m in models):
        raise GrowthError("no growth masks attached to these model chunks (attach_growth first)")
    return models


def _set(model, lam: float) -> None:
    if not 0.0 <= lam <= 1.0:
        raise GrowthError(f"growth lambda={lam} must be in [0, 1]")
    inst = model._flm_growth
    for mask in inst.masks:
        mask.set(lam)
    for norm, mask in inst.norms:
        norm.growth_mask = mask.value
    inst.lam = float(lam)


def set_growth_lambda(chunks: Iterable[torch.nn.Module], lam: float) -> None:
    """Set every new coordinate's mask (and every new layer's gate) to `lam` in [0, 1]."""
    for model in _installed(chunks):
        _set(model, lam)


def growth_lambda(chunks: Iterable[torch.nn.Module]) -> float | None:
    """The current lambda, or None when no growth masks are attached."""
    values = {getattr(getattr(unwrap(c), "_flm_growth", None), "lam", None) for c in chunks}
    if len(values) != 1:
        raise GrowthError(f"model chunks disagree on growth lambda: {values}")
    return values.pop()


def drop_growth_masks(chunks: Iterable[torch.nn.Module]) -> None:
    """Remove all masks and gates: the model runs as a plain FLM model again (no-op if none)."""
    for chunk in chunks:
        model = unwrap(chunk)
        inst = getattr(model, "_flm_growth", None)
        if inst is None:
            continue
        for handle in inst.handles:
            handle.remove()
        for norm, _ in inst.norms:
            norm.growth_mask = None
        model._flm_growth = None


def apply_growth_schedule(chunks: Iterable[torch.nn.Module], state: GrowthState | None, iteration: int
                          ) -> float | None:
    """The trainer's one call, before each step: lambda for `iteration` completed iterations.

    Attaches the masks if needed, sets lambda, and drops them once lambda reaches 1 (returns None
    then, and whenever `state` is None).
    """
    chunks = list(chunks)
    if state is None:
        return None
    lam = state.lambda_at(iteration)
    attached = getattr(unwrap(chunks[0]), "_flm_growth", None) is not None
    if lam >= 1.0:
        drop_growth_masks(chunks)
        return None
    if attached:
        set_growth_lambda(chunks, lam)
    else:
        attach_growth(chunks, state, lam)
    return lam


__all__ = ["GrowthState", "attach_growth", "set_growth_lambda", "growth_lambda", "drop_growth_masks",
           "apply_growth_schedule"]
