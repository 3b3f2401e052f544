"""The MSG mask ramp as a training hook: the trainer knows hooks, not growth records.

A grown checkpoint carries a growth record (`flm.growth`). `GrowthRamp` reads it when the trainer
loads a checkpoint, sets lambda before every step (masks attached while lambda < 1, dropped at 1)
and writes the record back into the checkpoints saved while the ramp is still running.
"""
from __future__ import annotations

import torch.distributed as dist

from flm_ext.checkpoint import CheckpointError
from flm_ext.growth.masks import GrowthState, apply_growth_schedule
from flm_ext.growth.operators import GrowthError


def _log(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, flush=True)


def ramp_warning(state: GrowthState, train_iters: int) -> str | None:
    """A warning when the ramp ends after the stage does: the new coordinates would stay mostly off."""
    end = state.start_iteration + state.ramp_steps
    if end <= train_iters:
        return None
    lam = state.lambda_at(train_iters)
    how = "mostly switched off" if lam < 0.5 else "not yet fully switched on"
    return (f"warning: the growth ramp ends at iteration {end} but this stage stops at {train_iters}: the new "
            f"layers / dimensions end the stage at lambda {lam:.2f} ({how}); pass "
            f"--growth-ramp-steps {max(1, (train_iters - state.start_iteration) // 2)} or train longer")


class GrowthRamp:
    """Training hook (see flm_ext.training.hooks): ramps a grown checkpoint's masks from 0 to 1."""

    def __init__(self, ramp_steps: int | None = None):
        self.ramp_steps, self.state = ramp_steps, None

    def on_load(self, record, *, restart: bool, train_iters: int) -> None:
        if not record.growth:
            return
        try:
            state = GrowthState.from_dict(record.growth)
        except GrowthError as e:  # pretrain_flm.py prints a CheckpointError as one line
            raise CheckpointError(f"the loaded checkpoint's growth record (flm.growth): {e}") from None
        if self.ramp_steps is not None:
            state = state.replace(ramp_steps=self.ramp_steps)
        if restart:
            state = state.replace(start_iteration=0)
        _log(f"growth: masks ramp from 0 to 1 over {state.ramp_steps} steps from iteration {state.start_iteration}")
        warning = ramp_warning(state, train_iters)
        if warning:
            _log(warning)
        self.state = state

    def before_step(self, chunks, iteration: int) -> None:
        if self.state is None:
            return
        if apply_growth_schedule(chunks, self.state, iteration) is None:
            _log(f"step {iteration + 1}: growth masks ramped to 1 and dropped; full-speed model from here")
            self.state = None

    def checkpoint_state(self) -> dict:
        return {"growth": self.state.to_dict()} if self.state is not None else {}
