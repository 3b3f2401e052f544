"""Extension points of the training loop. The trainer calls every hook it is given; features that
change the model during training (an MSG growth ramp: flm_ext.growth.ramp.GrowthRamp) plug in
here instead of the trainer knowing about them."""
from __future__ import annotations

from typing import Protocol


class TrainingHook(Protocol):
    def on_load(self, record, *, restart: bool, train_iters: int) -> None:
        """A checkpoint was loaded (`record`: its `flm_ext.checkpoint.CheckpointRecord`); `restart`: a
        new stage or fine-tune."""

    def before_step(self, chunks, iteration: int) -> None:
        """Before the step that follows `iteration` completed steps."""

    def checkpoint_state(self) -> dict:
        """Fields of the checkpoint record to set in the next save ({"growth": ...}; read back by
        `on_load`); a name that is not a record field is refused."""
