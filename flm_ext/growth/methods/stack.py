"""G_stack's depth stacking: new layers are copies of old ones, switched on at once (no masks).

Weights: with `--stack-factor g` the model gets g x L layers; `--depth-placement top` appends
copies of the whole stack in order (layers 1..L, 1..L, ...: G_stack's operator), `interleave`
repeats each layer in place (1, 1, 2, 2, ...); `--num-layers` not a multiple of L copies the top
layers (operators.GrowthPlan.layer_sources). Width is unchanged. Optimizer: a copied layer takes
its source's Adam moments too (the same weights see similar gradients; zero moments would make
Adam's first updates of the copies ~1/sqrt(1 - beta2) times too large). Function: NOT preserved:
each copy adds its block's output to the residual stream again, so the loss jumps at growth
(`--verify` measures it); G_stack's claim is that it recovers quickly, not that it is lossless.
"""
from __future__ import annotations

from flm_ext.growth.methods import GrowthMethod, positive_int, register
from flm_ext.growth.operators import DEPTH_PLACEMENTS, GrowthError, layer_source, old_layer

_WIDTHS = ("hidden_size", "num_attention_heads", "ffn_hidden_size")


class Stack(GrowthMethod):
    name = "stack"
    preserving = False
    options = {"stack_factor": None, "depth_placement": "top"}

    def _validate(self) -> None:
        factor = self.settings["stack_factor"]
        if factor is not None and positive_int("stack_factor", factor) < 2:
            raise GrowthError(f"--stack-factor={factor} must be >= 2 (1 would not grow)")
        if self.settings["depth_placement"] not in DEPTH_PLACEMENTS:
            raise GrowthError(f"--depth-placement={self.settings['depth_placement']!r} must be one of "
                              f"{DEPTH_PLACEMENTS}")

    def new_sizes(self, old, sizes):
        out = dict(sizes)
        factor = self.settings["stack_factor"]
        if factor is not None:
            layers = factor * old.num_layers
            if out.get("num_layers") not in (None, layers):
                raise GrowthError(f"--num-layers={out['num_layers']} disagrees with --stack-factor={factor} x "
                                  f"{old.num_layers} old layers = {layers}; give one of them")
            out["num_layers"] = layers
        return out

    def check(self, plan):
        for field in _WIDTHS:
            if getattr(plan.old, field) != getattr(plan.new, field):
                raise GrowthError(f"--method stack grows depth only: {field} {getattr(plan.old, field)} -> "
                                  f"{getattr(plan.new, field)}; widen with --method msg, clone or random")
        if plan.new.num_layers == plan.old.num_layers:
            raise GrowthError("--method stack needs more layers: give --num-layers or --stack-factor")

    def grow_width(self, key, tensor, plan, role="param", layer=None):
        old_shape, _ = plan.shapes(key)
        if tuple(tensor.shape) != old_shape:
            raise GrowthError(f"{key}: shape {tuple(tensor.shape)} is not the old config's {old_shape}")
        return tensor.clone()

    def grow_layer(self, key, old_layers, plan, layer, role="param", dtype=None):
        src, _ = layer_source(key, plan, layer)
        return self.grow_width(key, old_layer(old_layers, src), plan, role)


register(Stack)
