"""Run orchestration of `predict_loss.py sweep` on real tiny pretrain_flm.py runs: results by
width, finished runs skipped on a rerun, an interrupted run redone, flags checked before launch."""
from __future__ import annotations

import json
import os
import subprocess
import types

import pytest

from flm_ext.mup import cli, sweep as sweep_module
from flm_ext.mup.sweep import MARKER, read_metrics

# `data`, the tiny bilingual set, is a session fixture (conftest.py).


def _flags(data: dict) -> list[str]:
    return ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", data["tokenizer"],
            "--data-path", "0.5", data["en"], "0.5", data["zh"], "--split", "90,10,0", "--num-layers", "1",
            "--seq-length", "32", "--micro-batch-size", "4", "--global-batch-size", "4", "--train-iters", "4",
            "--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1", "--lr-warmup-iters", "1"]


def _sweep(out, data, widths=("16", "32")) -> list[str]:
    return ["sweep", "--out", str(out), "--jobs", "2", "--widths", *widths, "--lr", "3e-3", "--init-std", "0.02",
            "--output-mult", "1", "--mup-base-width", "16", "--head-dim", "8", *_flags(data)]


@pytest.fixture
def launched(monkeypatch) -> list[str]:
    """The run folder of every pretrain_flm.py process the sweep starts (the real Popen still runs)."""
    folders: list[str] = []

    def popen(cmd, *args, **kwargs):
        folders.append(os.path.basename(os.path.dirname(cmd[cmd.index("--metrics-jsonl") + 1])))
        return subprocess.Popen(cmd, *args, **kwargs)

    # the sweep module's own view of `subprocess` only: nothing else in this process is affected
    monkeypatch.setattr(sweep_module, "subprocess", types.SimpleNamespace(**{**vars(subprocess), "Popen": popen}))
    return folders


def test_sweep_records_losses_and_resumes_without_redoing_finished_runs(data, tmp_path, capsys, launched):
    out = tmp_path / "mup"
    assert cli.main(_sweep(out, data)) == 0
    assert sorted(launched) == ["w16", "w32"]
    first = capsys.readouterr().out
    assert "0 already finished (skipped), 2 to run" in first
    sweep = json.loads((out / "sweep" / "sweep.json").read_text())
    assert sweep["steps"] == [2, 4] and sweep["metric"] == "valid"
    points = {p["width"]: p for p in sweep["points"]}
    for width in (16, 32):
        p = points[width]
        metrics = read_metrics(str(out / "sweep" / "runs" / f"w{width}" / "metrics.jsonl"))
        assert p["status"] == "ok"
        assert p["losses"] == {"2": metrics[2]["valid/loss"], "4": metrics[4]["valid/loss"]}
        spec = json.loads((out / "sweep" / "runs" / f"w{width}" / "spec.json").read_text())
        assert spec["args"][spec["args"].index("--num-attention-heads") + 1] == str(width // 8)
    assert points[32]["total"] > points[16]["total"] > points[16]["non_embedding"] > 0

    markers = {w: (out / "sweep" / "runs" / f"w{w}" / MARKER) for w in (16, 32)}
    launched.clear()
    assert cli.main(_sweep(out, data)) == 0  # nothing to do: both runs finished
    assert "2 already finished (skipped), 0 to run" in capsys.readouterr().out
    assert launched == []  # no process started, whatever the files' time stamps say

    # An interrupted run (no marker, a partial metrics file) is redone; the finished one is not.
    markers[32].unlink()
    metrics32 = out / "sweep" / "runs" / "w32" / "metrics.jsonl"
    metrics32.write_text(metrics32.read_text().splitlines()[0] + "\n{\"iteration\": 3, \"train/lo")
    assert cli.main(_sweep(out, data)) == 0
    text = capsys.readouterr().out
    assert "1 already finished (skipped), 1 to run" in text and "w32: ok" in text
    assert launched == ["w32"]  # only the interrupted run was started again
    assert sorted(read_metrics(str(metrics32))) == [1, 2, 3, 4]
    again = json.loads((out / "sweep" / "sweep.json").read_text())
    assert again["points"][1]["losses"] == sweep["points"][1]["losses"]  # same seed, same data: same run

    # A folder holding different flags is refused, not mixed in.
    changed = _sweep(out, data)
    changed[changed.index("3e-3")] = "1e-3"
    assert cli.main(changed) == 2
    assert "holds a run with different flags" in capsys.readouterr().err


def test_bad_flags_fail_before_any_run_naming_the_flag(data, tmp_path, capsys):
    flags = _sweep(tmp_path / "a", data)
    missing = flags.copy()
    missing[missing.index(data["en"])] = data["en"] + "_nope"
    assert cli.main(missing) == 2
    assert "--data-path " + data["en"] + "_nope" in capsys.readouterr().err
    assert cli.main(_sweep(tmp_path / "b", data, widths=("20",))) == 2
    assert "width 20 is not a multiple of --head-dim 8" in capsys.readouterr().err
    assert cli.main([*_sweep(tmp_path / "c", data), "--hidden-size", "64"]) == 2
    assert "--hidden-size is set per run" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    assert os.path.exists(data["tokenizer"])
