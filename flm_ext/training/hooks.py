"""Extension points of the training loop. The trainer calls every hook it is given; features that
change the model during training (an MSG growth ramp: flm_ext.growth.ramp.GrowthRamp) plug in
here instead of the trainer knowing about them."""
from __future__ import annotations

from typing import Protocol


class TrainingHook(Protocol):
    def on_load(self, common: dict, *, restart: bool, train_iters: int) -> None:
        """A checkpoint was loaded (`common`: its plain-data state); `restart`: a new stage or fine-tune."""

    def before_step(self, chunks, iteration: int) -> None:
        """Before the step that follows `iteration` completed steps."""

    def checkpoint_state(self) -> dict:
        """Plain data to store in the checkpoint's `flm` dict (read back by `on_load`)."""
