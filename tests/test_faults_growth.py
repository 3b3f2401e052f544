"""Bad tools/grow_checkpoint.py method flags and growth records: exit 2, one line naming the flag or
checkpoint, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest

from launchers import load_tool

WIDE = ["--hidden-size", "128", "--num-attention-heads", "8"]

FAULTS = [
    (["--method", "stack", "--stack-factor", "1"], "--stack-factor=1 must be >= 2 (1 would not grow)"),
    (["--method", "stack", "--stack-factor", "-3"], "--stack-factor=-3 must be a positive integer"),
    (["--method", "clone", "--clone-noise", "-0.5"] + WIDE, "--clone-noise=-0.5 must be a finite number >= 0"),
    (["--method", "clone", "--clone-noise", "inf"] + WIDE, "--clone-noise=inf must be a finite number >= 0"),
    (["--method", "msg", "--stack-factor", "2"], "--stack-factor applies to --method stack, not --method msg"),
    (["--method", "clone", "--depth-init", "random"] + WIDE, "--depth-init applies to --method msg, not --method clone"),
    (["--method", "stack", "--num-layers", "4"] + WIDE, "--method stack grows depth only: hidden_size 64 -> 128"),
    (["--method", "clone", "--hidden-size", "96", "--num-attention-heads", "6"],
     "--method clone multiplies each width by an integer: hidden_size 64 -> 96 is not a multiple"),
    (["--method", "clone", "--num-layers", "4"] + WIDE, "--method clone grows width only: num_layers 2 -> 4"),
]


@pytest.fixture(scope="module")
def tool():
    return load_tool("grow_checkpoint")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from flm_ext.config import get_preset
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    root = tmp_path_factory.mktemp("grow_faults") / "src"
    write_synthetic_checkpoint(str(root), get_preset("tiny-stage1", num_layers=2, vocab_size=256), iteration=3)
    return root


@pytest.mark.parametrize("flags, message", FAULTS)
def test_bad_method_flags_exit_2_with_one_line(tool, source, tmp_path, capsys, flags, message):
    out = tmp_path / "grown"
    assert tool.main(["--load", str(source), "--save", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err == f"grow_checkpoint: error: {err.split('error: ', 1)[1]}" and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists() and not Path(str(out) + ".partial").exists()


@pytest.fixture(scope="module")
def bad_record(tmp_path_factory):
    """A checkpoint whose growth record (flm.growth) names an axis no rule knows (manifest rewritten,
    so the record, not the checksums, is what is wrong)."""
    import torch

    from flm_ext.checkpoint import manifest_for_tree
    from flm_ext.config import get_preset
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    root = tmp_path_factory.mktemp("bad_growth_record") / "src"
    write_synthetic_checkpoint(str(root), get_preset("tiny-stage1", num_layers=2, vocab_size=256), iteration=3)
    folder = root / "iter_0000003"
    common = torch.load(folder / "common.pt", weights_only=False)
    common["flm"]["growth"] = {"changes": [{"axis": "vocab", "old": 256, "new": 512}], "ramp_steps": 10}
    torch.save(common, folder / "common.pt")
    manifest_for_tree(str(folder))
    return root


def test_a_bad_growth_record_is_one_line_naming_the_checkpoint(tool, bad_record, tmp_path, capsys):
    out = tmp_path / "grown"
    assert tool.main(["--load", str(bad_record), "--save", str(out), "--num-layers", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--load {bad_record}: " in err, err
    assert "growth record (flm.growth): unknown growth axis 'vocab'; known: hidden, heads, ffn, layers" in err, err
    assert not out.exists() and not Path(str(out) + ".partial").exists()

    from flm_ext.export import ExportError, open_for_export
    from flm_ext.export.convert import growth_of

    with pytest.raises(ExportError, match=r"iter_0000003: growth record \(flm.growth\): unknown growth axis 'vocab'"):
        growth_of(open_for_export(str(bad_record)))

    from flm_ext.checkpoint import open_checkpoint
    from flm_ext.growth import GrowthError, GrowthState

    with pytest.raises(GrowthError, match=r"iter_0000003: growth record \(flm.growth\): unknown growth axis 'vocab'"):
        GrowthState.at_checkpoint(open_checkpoint(str(bad_record)))  # what evaluation.core.load_model reads
