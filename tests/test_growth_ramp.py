"""The trainer's growth-ramp hook warns, in one line at load time, when a grown checkpoint's mask
ramp outlasts the stage that trains it (the new layers / dimensions would stay mostly off)."""
from __future__ import annotations

import re

import pytest

from flm_ext.checkpoint import CheckpointRecord
from flm_ext.config import FLMConfig
from flm_ext.growth.state import AxisChange, GrowthState
from flm_ext.growth.ramp import GrowthRamp


MODEL = FLMConfig(num_layers=8, hidden_size=128, num_attention_heads=8, seq_length=64, vocab_size=1024)


def grown_common(ramp_steps: int, start_iteration: int = 0) -> CheckpointRecord:
    """The record of a depth-grown checkpoint (4 -> 8 layers), as the growth tool writes it."""
    state = GrowthState((AxisChange("layers", 4, 8, positions=(4, 5, 6, 7)),), ramp_steps, start_iteration)
    return CheckpointRecord(iteration=start_iteration, model_config=MODEL, growth=state.to_dict())


def load(capsys, record: CheckpointRecord, *, train_iters: int, restart: bool, override: int | None = None
         ) -> list[str]:
    GrowthRamp(override).on_load(record, restart=restart, train_iters=train_iters)
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]


@pytest.mark.parametrize("ramp, start, stage, restart, final_lambda", [
    (1000, 0, 200, True, 200 / 1000),  # the growth tool's default ramp on a 200-step stage
    (1000, 300, 200, True, 200 / 1000),  # a new stage counts from its own iteration 0
    (100, 150, 200, False, (200 - 150) / 100),  # resumed mid-ramp: 50 of 100 steps left at the end
])
def test_a_ramp_longer_than_the_stage_warns_with_both_lengths(capsys, ramp, start, stage, restart, final_lambda):
    warnings = load(capsys, grown_common(ramp, start), train_iters=stage, restart=restart)
    assert len(warnings) == 1, warnings
    numbers = set(re.findall(r"\d+(?:\.\d+)?", warnings[0]))
    assert str(stage) in numbers and f"{final_lambda:.2f}" in numbers, warnings[0]
    assert str((0 if restart else start) + ramp) in numbers, warnings[0]  # where the ramp would end


@pytest.mark.parametrize("ramp, stage, override", [
    (20, 200, None),  # the walk-through's ramp
    (200, 200, None),  # the masks reach 1 exactly at the end
    (1000, 200, 100),  # --growth-ramp-steps shortens the recorded ramp
    (1000, 200, 0),  # no ramp at all
])
def test_a_ramp_within_the_stage_does_not_warn(capsys, ramp, stage, override):
    assert load(capsys, grown_common(ramp), train_iters=stage, restart=True, override=override) == []


def test_a_checkpoint_without_growth_does_not_warn(capsys):
    assert load(capsys, CheckpointRecord(iteration=5, model_config=MODEL), train_iters=1, restart=True) == []


def test_a_malformed_growth_record_is_a_checkpoint_error():
    """pretrain_flm.py prints a CheckpointError as one line (exit 2); a GrowthError would be a traceback."""
    from flm_ext.checkpoint import CheckpointError

    record = grown_common(100)
    record.growth["changes"][0]["positions"] = [4, 5, 6, 9]
    with pytest.raises(CheckpointError, match=r"growth record \(flm.growth\): layers: positions=\[4, 5, 6, 9\] must "
                                              r"be 4 distinct indices below new=8"):
        GrowthRamp().on_load(record, restart=True, train_iters=200)


@pytest.mark.parametrize("iteration, expected", [(300, 0.0), (350, 0.5), (399, 0.99), (400, None), (900, None)])
def test_the_masks_at_a_checkpoint_follow_its_ramp(iteration, expected):
    """What evaluation attaches and export folds in: lambda = (iteration - start) / ramp during the
    ramp (from the record's numbers), no masks once it has ended or without a growth record."""
    from types import SimpleNamespace

    state = GrowthState((AxisChange("layers", 4, 8, positions=(4, 5, 6, 7)),), 100, 300)
    grown = SimpleNamespace(growth_record=state.to_dict(), iteration=iteration, folder="ckpt")
    got, lam = GrowthState.at_checkpoint(grown)
    assert (got, lam) == ((None, 1.0) if expected is None else (state, pytest.approx(expected)))
    plain = SimpleNamespace(growth_record=None, iteration=iteration, folder="ckpt")
    assert GrowthState.at_checkpoint(plain) == (None, 1.0)
