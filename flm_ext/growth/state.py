"""The MSG growth record a grown checkpoint carries (`flm.growth`): which coordinates are new and how
the masks ramp. New coordinates are appended at the end of their axis, so an old size says it all;
new layers are listed. `to_dict`/`from_dict` give the plain dict a checkpoint stores. Kept apart
from masks.py (which hooks megatron modules) so that offline tools read and write it without
importing megatron.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from flm_ext.growth.operators import GrowthError, GrowthPlan


@dataclass(frozen=True)
class GrowthState:
    """Which coordinates of a grown model are new, and how the masks ramp.

    start_iteration: the training iteration count at which growth happened (the grown
    checkpoint's); lambda at iteration i is (i - start_iteration) / ramp_steps, clipped to [0, 1].
    The current lambda is not stored: it follows from the iteration, so a resume mid-ramp picks
    up the same value.
    """

    num_layers: int
    hidden_size: int
    old_hidden_size: int
    num_attention_heads: int
    old_num_attention_heads: int
    head_dim: int
    ffn_hidden_size: int
    old_ffn_hidden_size: int
    new_layers: tuple[int, ...]
    ramp_steps: int
    start_iteration: int = 0

    def __post_init__(self):
        object.__setattr__(self, "new_layers", tuple(int(j) for j in self.new_layers))
        for name in ("num_layers", "hidden_size", "old_hidden_size", "num_attention_heads",
                     "old_num_attention_heads", "head_dim", "ffn_hidden_size", "old_ffn_hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise GrowthError(f"{name}={value!r} must be a positive integer")
        for new, old in (("hidden_size", "old_hidden_size"), ("num_attention_heads", "old_num_attention_heads"),
                         ("ffn_hidden_size", "old_ffn_hidden_size")):
            if getattr(self, old) > getattr(self, new):
                raise GrowthError(f"{old}={getattr(self, old)} exceeds {new}={getattr(self, new)}")
        if not isinstance(self.ramp_steps, int) or self.ramp_steps < 0:
            raise GrowthError(f"ramp_steps={self.ramp_steps!r} must be a non-negative integer")
        bad = [j for j in self.new_layers if not 0 <= j < self.num_layers]
        if bad or len(set(self.new_layers)) != len(self.new_layers):
            raise GrowthError(f"new_layers={list(self.new_layers)} must be distinct indices below "
                              f"num_layers={self.num_layers}")

    @classmethod
    def from_plan(cls, plan: GrowthPlan, ramp_steps: int, start_iteration: int = 0) -> "GrowthState":
        old, new = plan.old, plan.new
        return cls(num_layers=new.num_layers, hidden_size=new.hidden_size, old_hidden_size=old.hidden_size,
                   num_attention_heads=new.num_attention_heads,
                   old_num_attention_heads=old.num_attention_heads, head_dim=new.head_dim,
                   ffn_hidden_size=new.ffn_hidden_size, old_ffn_hidden_size=old.ffn_hidden_size,
                   new_layers=plan.new_layers, ramp_steps=ramp_steps, start_iteration=start_iteration)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["new_layers"] = list(self.new_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "GrowthState":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise GrowthError(f"unknown growth state field(s) {sorted(unknown)}; known: {sorted(fields)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        if required - set(data):
            raise GrowthError(f"growth state lacks field(s) {sorted(required - set(data))}")
        return cls(**data)

    def replace(self, **changes) -> "GrowthState":
        """E.g. `state.replace(ramp_steps=args.growth_ramp_steps)` to override the recorded ramp."""
        return dataclasses.replace(self, **changes)

    def lambda_at(self, iteration: int) -> float:
        """Mask value for the step that follows `iteration` completed iterations."""
        if self.ramp_steps == 0:
            return 1.0
        return min(1.0, max(0.0, (iteration - self.start_iteration) / self.ramp_steps))

    # Per-axis "is new" vectors over the whole (global) axis.
    def new_hidden(self) -> torch.Tensor:
        return torch.arange(self.hidden_size) >= self.old_hidden_size

    def new_qkv_rows(self) -> torch.Tensor:
        heads = torch.arange(self.num_attention_heads) >= self.old_num_attention_heads
        return heads.repeat_interleave(3 * self.head_dim)  # rows grouped per head: [q_h, k_h, v_h]

    def new_ffn(self) -> torch.Tensor:
        return torch.arange(self.ffn_hidden_size) >= self.old_ffn_hidden_size


__all__ = ["GrowthState"]
