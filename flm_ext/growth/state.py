"""The MSG growth record a grown checkpoint carries (`flm.growth`): one `AxisChange` per axis that
grew (hidden dims, heads, FFN units, layers, or any axis registered in rules.py) and how the masks
ramp. `to_dict`/`from_dict` give the plain dict a checkpoint stores; `from_dict` also reads the
record of checkpoints written before the per-axis list (one old/new field pair per axis). Kept
apart from masks.py (which hooks megatron modules) so that offline tools read and write it without
importing megatron.

The stored dict: {"changes": [{"axis", "old", "new", "positions", "unit", "method", "knobs"}, ...],
"ramp_steps", "start_iteration"}.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

import torch

from flm_ext.growth.operators import GrowthError, GrowthPlan
from flm_ext.growth.rules import axis_rule, axis_rules


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GrowthError(f"{name}={value!r} must be a positive integer")


def _known_fields(cls, data: Mapping, what: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    if set(data) - names:
        raise GrowthError(f"unknown {what} field(s) {sorted(set(data) - names)}; known: {sorted(names)}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if required - set(data):
        raise GrowthError(f"{what} lacks field(s) {sorted(required - set(data))}")


@dataclass(frozen=True)
class AxisChange:
    """One axis grown from `old` to `new` units.

    positions: indices of the new units in the grown axis (None: appended, i.e. old .. new-1; MSG
    appends width and may interleave layers). unit: coordinates per unit where the mask acts (3 x
    head_dim QKV rows per head). method, knobs: the operator that made the change and its settings,
    for the record (the masks depend only on the positions).
    """

    axis: str
    old: int
    new: int
    positions: tuple[int, ...] | None = None
    unit: int = 1
    method: str = "msg"
    knobs: dict = field(default_factory=dict)

    def __post_init__(self):
        axis_rule(self.axis)  # a registered axis
        for name in ("old", "new", "unit"):
            _positive(f"{self.axis}.{name}", getattr(self, name))
        if self.old > self.new:
            raise GrowthError(f"{self.axis}: old={self.old} exceeds new={self.new}")
        if self.positions is not None:
            positions = tuple(int(j) for j in self.positions)
            object.__setattr__(self, "positions", positions)
            bad = [j for j in positions if not 0 <= j < self.new]
            if bad or len(set(positions)) != len(positions) or len(positions) != self.new - self.old:
                raise GrowthError(f"{self.axis}: positions={list(positions)} must be {self.new - self.old} distinct "
                                  f"indices below new={self.new}")
        object.__setattr__(self, "knobs", dict(self.knobs))

    def new_units(self) -> torch.Tensor:
        """Bool per unit of the grown axis: True where the unit is new."""
        flags = torch.zeros(self.new, dtype=torch.bool)
        if self.positions is None:
            flags[self.old:] = True
        else:
            flags[list(self.positions)] = True
        return flags

    def is_new(self) -> torch.Tensor:
        """Bool per coordinate at the mask sites (each unit repeated `unit` times)."""
        flags = self.new_units()
        return flags.repeat_interleave(self.unit) if self.unit > 1 else flags

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["positions"] = None if self.positions is None else list(self.positions)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "AxisChange":
        if not isinstance(data, Mapping):
            raise GrowthError(f"growth change {data!r} is not a dict")
        _known_fields(cls, data, "growth change")
        return cls(**data)


@dataclass(frozen=True)
class GrowthState:
    """Which coordinates of a grown model are new, and how the masks ramp.

    start_iteration: the training iteration count at which growth happened (the grown
    checkpoint's); lambda at iteration i is (i - start_iteration) / ramp_steps, clipped to [0, 1].
    The current lambda is not stored: it follows from the iteration, so a resume mid-ramp picks
    up the same value.
    """

    changes: tuple[AxisChange, ...]
    ramp_steps: int
    start_iteration: int = 0

    def __post_init__(self):
        object.__setattr__(self, "changes", tuple(self.changes))
        axes = [c.axis for c in self.changes]
        if len(set(axes)) != len(axes):
            raise GrowthError(f"growth state lists an axis twice: {axes}")
        if isinstance(self.ramp_steps, bool) or not isinstance(self.ramp_steps, int) or self.ramp_steps < 0:
            raise GrowthError(f"ramp_steps={self.ramp_steps!r} must be a non-negative integer")

    @classmethod
    def from_plan(cls, plan: GrowthPlan, ramp_steps: int, start_iteration: int = 0, method: str = "msg",
                  knobs: Mapping | None = None) -> "GrowthState":
        """A change for every registered axis the plan grows."""
        changes = []
        for rule in axis_rules():
            old, new = getattr(plan.old, rule.size_field), getattr(plan.new, rule.size_field)
            if new != old:
                changes.append(AxisChange(rule.name, old, new, positions=rule.positions(plan), unit=rule.unit(plan.new),
                                          method=method, knobs=dict(knobs or {})))
        return cls(tuple(changes), ramp_steps, start_iteration)

    def change(self, axis: str) -> AxisChange | None:
        """The change of `axis`, or None when it did not grow."""
        return next((c for c in self.changes if c.axis == axis), None)

    def to_dict(self) -> dict:
        return {"changes": [c.to_dict() for c in self.changes], "ramp_steps": self.ramp_steps,
                "start_iteration": self.start_iteration}

    @classmethod
    def from_dict(cls, data: Mapping) -> "GrowthState":
        if "changes" not in data:
            return cls._from_pair_record(data)
        _known_fields(cls, data, "growth state")
        if not isinstance(data["changes"], (list, tuple)):
            raise GrowthError(f"growth state changes={data['changes']!r} must be a list")
        return cls(tuple(AxisChange.from_dict(c) for c in data["changes"]), data["ramp_steps"],
                   data.get("start_iteration", 0))

    @classmethod
    def of_checkpoint(cls, ckpt) -> "GrowthState | None":
        """The growth record of an open flm_ext.checkpoint Checkpoint (None without one); a malformed
        record is a GrowthError naming the checkpoint folder."""
        record = ckpt.growth_record
        if not record:
            return None
        try:
            return cls.from_dict(record)
        except GrowthError as e:
            raise GrowthError(f"{ckpt.folder}: growth record (flm.growth): {e}") from None

    @classmethod
    def at_checkpoint(cls, ckpt) -> "tuple[GrowthState | None, float]":
        """(growth state, mask lambda at the checkpoint's iteration), or (None, 1.0) without a growth
        record or past its ramp: the masks a model loaded from `ckpt` carries (evaluation attaches
        them, export folds them in). A malformed record is `of_checkpoint`'s GrowthError."""
        state = cls.of_checkpoint(ckpt)
        lam = 1.0 if state is None else state.lambda_at(ckpt.iteration)
        return (state, lam) if lam < 1.0 else (None, 1.0)

    @classmethod
    def _from_pair_record(cls, data: Mapping) -> "GrowthState":
        """A record written before the per-axis list: an old/new pair per width axis, new_layers."""
        fields = {"num_layers", "hidden_size", "old_hidden_size", "num_attention_heads", "old_num_attention_heads",
                  "head_dim", "ffn_hidden_size", "old_ffn_hidden_size", "new_layers", "ramp_steps"}
        unknown = set(data) - fields - {"start_iteration"}
        if unknown:
            raise GrowthError(f"unknown growth state field(s) {sorted(unknown)}; known: changes, ramp_steps, "
                              f"start_iteration (or the per-axis pairs of older checkpoints)")
        if fields - set(data):
            raise GrowthError(f"growth state lacks field(s) {sorted(fields - set(data))}")
        for name in fields - {"new_layers", "ramp_steps"}:
            _positive(name, data[name])
        changes = [AxisChange(axis, data[f"old_{size}"], data[size], unit=unit)
                   for axis, size, unit in (("hidden", "hidden_size", 1),
                                            ("heads", "num_attention_heads", 3 * data["head_dim"]),
                                            ("ffn", "ffn_hidden_size", 1))
                   if data[size] != data[f"old_{size}"]]
        new_layers = list(data["new_layers"])
        if new_layers:
            changes.append(AxisChange("layers", data["num_layers"] - len(new_layers), data["num_layers"],
                                      positions=tuple(new_layers)))
        return cls(tuple(changes), data["ramp_steps"], data.get("start_iteration", 0))

    def replace(self, **changes) -> "GrowthState":
        """E.g. `state.replace(ramp_steps=args.growth_ramp_steps)` to override the recorded ramp."""
        return dataclasses.replace(self, **changes)

    def lambda_at(self, iteration: int) -> float:
        """Mask value for the step that follows `iteration` completed iterations."""
        if self.ramp_steps == 0:
            return 1.0
        return min(1.0, max(0.0, (iteration - self.start_iteration) / self.ramp_steps))


__all__ = ["GrowthState", "AxisChange"]
