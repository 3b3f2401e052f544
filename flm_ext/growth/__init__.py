"""MSG (masked structural growth) for FLM: tensor operators (`operators`) and runtime masks (`masks`)."""
from flm_ext.growth.masks import (GrowthState, apply_growth_schedule, attach_growth, drop_growth_masks,
                                  growth_lambda, set_growth_lambda)
from flm_ext.growth.operators import (ROLES, GrowthError, GrowthPlan, fresh_init, grow_layer, grow_state_dict,
                                      grow_tensor, grow_width, is_growable, is_layer_key, split_layer_name)

__all__ = ["GrowthPlan", "GrowthError", "GrowthState", "ROLES", "fresh_init", "grow_width", "grow_layer",
           "grow_tensor", "grow_state_dict", "is_growable", "is_layer_key", "split_layer_name", "attach_growth",
           "set_growth_lambda", "growth_lambda", "drop_growth_masks", "apply_growth_schedule"]
