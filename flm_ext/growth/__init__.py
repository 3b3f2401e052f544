"""Growth for FLM: MSG's tensor operators (`operators`) and runtime masks (`masks`), the growth
record (`state`), where the masks act (`rules`), the other operators (`methods`) and the growth of
a saved checkpoint (`offline`: what tools/grow_checkpoint.py runs).

Names are resolved on first use (PEP 562), so that `flm_ext.growth.offline` and the growth
tool do not import megatron (masks.py hooks megatron modules; the tool only moves tensors).
"""
from __future__ import annotations

from flm_ext import lazy_exports

_EXPORTS = {
    "GrowthState": "state",
    "AxisChange": "state",
    **{name: "masks" for name in ("apply_growth_schedule", "attach_growth", "drop_growth_masks", "growth_lambda",
                                  "set_growth_lambda")},
    **{name: "operators" for name in ("ROLES", "GrowthError", "GrowthPlan", "fresh_init", "grow_layer",
                                      "grow_state_dict", "grow_tensor", "grow_width", "is_growable", "is_layer_key",
                                      "split_layer_name")},
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
