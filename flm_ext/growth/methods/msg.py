"""MSG (masked structural growth), FLM's operator: the tensors of operators.py plus the mask ramp.

Weights: old ones in the leading block, new entries from the grown config's init; new layers copy
an old one (`--depth-init stack`) or start fresh (`random`), placed on top or interleaved.
Optimizer: old moments copied, new entries and new layers' moments 0 (Adam's step kept); under µP
the final LayerNorm's moments follow its rescale. Function: preserved exactly while the masks are
0 (the trainer ramps them to 1 over --growth-ramp-steps).
"""
from __future__ import annotations

from flm_ext.growth.methods import GrowthMethod, register
from flm_ext.growth.operators import DEPTH_INITS, DEPTH_PLACEMENTS, GrowthError, grow_layer, grow_width


class MSG(GrowthMethod):
    name = "msg"
    preserving = True
    uses_masks = True
    options = {"depth_init": "stack", "depth_placement": "top"}

    def _validate(self) -> None:
        if self.settings.get("depth_init", "stack") not in DEPTH_INITS:
            raise GrowthError(f"--depth-init={self.settings['depth_init']!r} must be one of {DEPTH_INITS}")
        if self.settings["depth_placement"] not in DEPTH_PLACEMENTS:
            raise GrowthError(f"--depth-placement={self.settings['depth_placement']!r} must be one of "
                              f"{DEPTH_PLACEMENTS}")

    def grow_width(self, key, tensor, plan, role="param", layer=None):
        return grow_width(key, tensor, plan, role, layer=layer)

    def grow_layer(self, key, old_layers, plan, layer, role="param", dtype=None):
        return grow_layer(key, old_layers, plan, layer, role, dtype=dtype)


register(MSG)
