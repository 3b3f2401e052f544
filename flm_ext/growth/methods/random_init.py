"""The baseline: MSG's tensors (new entries and new layers freshly initialised) without its masks.

Weights: old ones in the leading block, every new entry and every new layer from the grown
config's init (layers placed on top or interleaved). Optimizer: as MSG (old moments copied, new
ones 0). Function: NOT preserved: the new heads, FFN units, hidden dims and layers act from the
first step (a widened LayerNorm also averages over the new dims), so the loss jumps; `--verify`
measures the jump.
"""
from __future__ import annotations

from flm_ext.growth.methods import register
from flm_ext.growth.methods.msg import MSG


class RandomInit(MSG):
    name = "random"
    preserving = False
    uses_masks = False
    depth_init = "random"
    options = {"depth_placement": "top"}


register(RandomInit)
