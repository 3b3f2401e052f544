"""Growth operators behind one interface, looked up by name (`tools/grow_checkpoint.py --method`).

Each operator is one module here that subclasses `GrowthMethod` and calls `register`:

- `msg`    MSG (FLM's operator): old weights in the leading block, new entries freshly initialised,
           function kept by runtime masks that ramp 0 -> 1 (masks.py). Width and depth.
- `stack`  G_stack's depth stacking: new layers are copies of old blocks of layers, no masks.
- `clone`  HyperCloning's width rule: every width multiplied by an integer, weights repeated and
           divided by the input's repeat factor, function kept with no masks.
- `random` the baseline: MSG's tensors without MSG's masks (new parts random, switched on at once).

An operator grows whole global tensors (`grow_width` for one tensor or one layer's slice,
`grow_layer` for one layer of a stacked `decoder.layers.*` tensor), for the three roles of
operators.py ("param", "exp_avg", "exp_avg_sq"), so the checkpoint tool, the tests and the
comparison benchmark all share it. To add one: a module with a subclass that sets `name`,
`preserving`, `uses_masks`, `options` (its knobs, the tool's flags `--<option-with-dashes>`), and
implements `check` and the two grow functions; then `register(TheClass)` at its end. Every
module of this package is imported with it (`_import_operators`), so that is all: no list to edit
(docs/extending.md shows one).
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from typing import ClassVar, Mapping

import torch

from flm_ext.config import FLMConfig
from flm_ext.growth.operators import GrowthError, GrowthPlan, OldLayers, is_layer_key

_REGISTRY: dict[str, type["GrowthMethod"]] = {}


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


class GrowthMethod:
    """One growth operator with its knobs (validated once, in the constructor)."""

    name: ClassVar[str]
    preserving: ClassVar[bool]          # claims the grown model computes the old function
    uses_masks: ClassVar[bool] = False  # needs the trainer's MSG mask ramp (flm.growth record)
    options: ClassVar[Mapping[str, object]] = {}  # knob -> default
    depth_init: ClassVar[str] = "stack"  # how GrowthPlan.layer_sources builds new layers

    def __init__(self, **given):
        for option, value in given.items():
            if option not in self.options:
                takes = [m for m, c in _REGISTRY.items() if option in c.options]
                raise GrowthError(f"{flag(option)} applies to --method {'/'.join(takes) or '(none)'}, "
                                  f"not --method {self.name}")
        self.settings = {**self.options, **{k: v for k, v in given.items() if v is not None}}
        self._validate()

    def _validate(self) -> None:
        """Check the knobs (raise GrowthError naming the flag)."""

    def new_sizes(self, old: FLMConfig, sizes: Mapping[str, int | None]) -> dict[str, int | None]:
        """The requested sizes, completed by the method's knobs (e.g. a stacking factor)."""
        return dict(sizes)

    def plan(self, old: FLMConfig, new: FLMConfig, seed: int = 0) -> GrowthPlan:
        plan = GrowthPlan(old, new, depth_init=self.settings.get("depth_init", self.depth_init),
                          depth_placement=self.settings.get("depth_placement", "top"), seed=seed)
        self.check(plan)
        return plan

    def check(self, plan: GrowthPlan) -> None:
        """Refuse a growth this operator cannot do (GrowthError naming the field)."""

    def record(self) -> dict:
        """What the checkpoint stores about the method (flm.grown_from)."""
        return {"method": self.name, "function_preserving": self.preserving, "masks": self.uses_masks,
                **{k: v for k, v in self.settings.items()}}

    def grow_width(self, key: str, tensor: torch.Tensor, plan: GrowthPlan, role: str = "param",
                   layer: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def grow_layer(self, key: str, old_layers: OldLayers, plan: GrowthPlan, layer: int, role: str = "param",
                   dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    # Whole tensors, for tests and in-memory growth.
    def grow_tensor(self, key: str, tensor: torch.Tensor, plan: GrowthPlan, role: str = "param") -> torch.Tensor:
        if not is_layer_key(key):
            return self.grow_width(key, tensor, plan, role)
        if tensor.dim() == 0 or tensor.shape[0] != plan.old.num_layers:
            raise GrowthError(f"{key}: stacked tensor of shape {tuple(tensor.shape)} does not have the old "
                              f"config's {plan.old.num_layers} layers on axis 0")
        return torch.stack([self.grow_layer(key, tensor, plan, j, role) for j in range(plan.new.num_layers)])

    def grow_state_dict(self, state: Mapping[str, torch.Tensor], plan: GrowthPlan, role: str = "param"
                        ) -> dict[str, torch.Tensor]:
        return {key: self.grow_tensor(key, tensor, plan, role) for key, tensor in state.items()}


def register(cls: type[GrowthMethod]) -> type[GrowthMethod]:
    if cls.name in _REGISTRY:
        raise GrowthError(f"growth method {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_method(name: str, **options) -> GrowthMethod:
    """The operator `name` with its knobs (None = default); GrowthError for unknown names or bad knobs."""
    if name not in _REGISTRY:
        raise GrowthError(f"--method {name!r} is not a growth method; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](**options)


def method_of(record) -> GrowthMethod | None:
    """The operator a grown checkpoint's record (`CheckpointRecord.grown_from`) names (None if it was
    not grown)."""
    grown = record.grown_from
    if not grown:
        return None
    name = grown.get("method", "msg")  # checkpoints from before the registry were grown by MSG
    options = {k: grown[k] for k in _REGISTRY.get(name, GrowthMethod).options if k in grown}
    return get_method(name, **options)


def positive_int(option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GrowthError(f"{flag(option)}={value!r} must be a positive integer")
    return value


def nonnegative_float(option: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise GrowthError(f"{flag(option)}={value!r} must be a finite number >= 0")
    return float(value)


def _import_operators() -> None:
    """Import every module of this package: each registers its operator, so adding one is a module
    and its `register` call, nothing else. The built-in ones first, in the order --method lists them."""
    builtin = ("msg", "stack", "clone", "random_init")
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in builtin + tuple(n for n in found if n not in builtin):
        importlib.import_module(f"{__name__}.{name}")


_import_operators()

__all__ = ["GrowthMethod", "register", "get_method", "method_names", "method_of", "flag"]
