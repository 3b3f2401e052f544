"""Loss spikes: a finite spike (above --loss-spike-factor x the running median) is logged with its
batch's sample ids; with --loss-spike-rollback the run reloads the latest checkpoint, replays to
the spike exactly and skips that batch. (Without --loss-spike-rollback the same detection runs and
the loop simply goes on.)"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_data
from flm_ext.training.monitoring import LossSpikeDetector

REPO = Path(__file__).resolve().parents[1]
ENV = dict(tiny_data.ENV, PYTHONPATH=f"{REPO}:{REPO / 'tests'}")


def run_with_spike(data, out: Path, step: int, **flags) -> tuple[str, list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    args = tiny_data.train_args(data, metrics_jsonl=str(out / "metrics.jsonl"), **flags)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "spike_run.py"), str(step), "30", *args],
                          capture_output=True, text=True, env=ENV, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    return text, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_detector_uses_a_running_median_of_finite_losses():
    d = LossSpikeDetector(2.0, window=3)
    assert [d.check(x) for x in (5.0, 4.0, float("nan"), 6.0)] == [None] * 4  # too little history, NaN ignored
    assert d.check(11.0) == 5.0  # median of 5, 4, 6
    assert d.check(9.0) is None  # the spike stayed out of the history: 9 <= 2 x 5
    assert d.median() == 6.0  # now 4, 6, 9


@pytest.mark.slow
def test_a_spike_is_logged_with_its_sample_ids_then_rolled_back_and_skipped(data, tmp_path):
    ckpt = tmp_path / "ckpt"
    text, rows = run_with_spike(data, tmp_path, 7, train_iters=10, save=str(ckpt), save_interval=4, keep_last=0,
                                loss_spike_factor=1.5, loss_spike_window=5, loss_spike_rollback=True)
    assert "injected a spike before step 7" in text
    spike = re.search(r"step 7: loss spike: (\S+) > 1.5 x running median (\S+); the batch is samples \[48, 56\)",
                      text)
    assert spike, text[-3000:]
    assert len(re.findall("loss spike:", text)) == 1, text[-3000:]  # only step 7
    first_pass = {}
    for r in rows:
        if "train/loss" in r:
            first_pass.setdefault(r["iteration"], r)
    spiked = next(r["train/loss_spike"] for r in rows if "train/loss_spike" in r)
    before = sorted(first_pass[i]["train/loss"] for i in range(2, 7))  # the window: steps 2-6
    assert float(spike.group(1)) == round(spiked, 4) and spiked > 1.5 * max(before)
    assert float(spike.group(2)) == round(before[2], 4)  # their median
    record = json.loads((ckpt / "loss_spikes.jsonl").read_text())
    assert record["iteration"] == 7 and record["sample_ids"] == list(range(48, 56))
    kinds = {kind for kind, _ in record["sources"]}
    assert kinds <= {"teacher", "language"} and "language" in kinds
    assert f"step 7: rolled back to {ckpt}/iter_0000004 (iteration 4)" in text, text[-3000:]
    assert "step 7: skipping samples [48, 56) (a loss spike at step 7); no update" in text, text[-3000:]
    losses: dict[int, list[float]] = {}
    lrs: dict[int, list[float]] = {}
    for r in rows:
        if "train/loss" in r:
            losses.setdefault(r["iteration"], []).append(r["train/loss"])
            lrs.setdefault(r["iteration"], []).append(r["train/lr"])
    # Steps 5 and 6 ran twice, from the checkpoint of step 4 the second time: the same losses and LRs.
    assert len(losses[5]) == len(losses[6]) == 2 and losses[5][0] == losses[5][1] and losses[6][0] == losses[6][1]
    assert lrs[5][0] == lrs[5][1] and lrs[6][0] == lrs[6][1] and lrs[8][0] < lrs[6][0]
    assert 7 not in losses  # the spiked batch: no step, neither the first time (rolled back) nor the second
    assert sorted(losses) == [1, 2, 3, 4, 5, 6, 8, 9, 10] and max(losses[10]) < 1.5 * losses[6][0]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "10"
    assert "'skipped_steps': 1" in text
