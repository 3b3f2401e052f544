"""Loss spikes: a finite spike (above --loss-spike-factor x the running median) is logged with its
batch's sample ids; with --loss-spike-rollback the run reloads the latest checkpoint, replays to
the spike exactly and skips that batch."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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


def test_a_spike_is_logged_with_the_batch_sample_ids(data, tmp_path):
    text, rows = run_with_spike(data, tmp_path, 6, train_iters=8, save=str(tmp_path / "ckpt"),
                                loss_spike_factor=1.5, loss_spike_window=5)
    assert "injected a spike before step 6" in text
    spike = re.search(r"step 6: loss spike: (\S+) > 1.5 x running median (\S+); the batch is samples \[40, 48\)",
                      text)
    assert spike, text[-3000:]
    loss = {r["iteration"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert float(spike.group(1)) == round(loss[6], 4) and loss[6] > 1.5 * max(loss[i] for i in range(1, 6))
    assert float(spike.group(2)) == round(sorted(loss[i] for i in range(1, 6))[2], 4)  # median of steps 1-5
    assert len(re.findall("loss spike", text)) == 1, text[-3000:]  # only step 6
    record = json.loads((tmp_path / "ckpt" / "loss_spikes.jsonl").read_text())
    assert record["iteration"] == 6 and record["sample_ids"] == list(range(40, 48))
    kinds = {kind for kind, _ in record["sources"]}
    assert kinds <= {"teacher", "language"} and "language" in kinds


def test_rollback_reloads_replays_exactly_and_skips_the_spiked_batch(data, tmp_path):
    ckpt = tmp_path / "ckpt"
    text, rows = run_with_spike(data, tmp_path, 7, train_iters=10, save=str(ckpt), save_interval=4, keep_last=0,
                                loss_spike_factor=1.5, loss_spike_window=5, loss_spike_rollback=True)
    assert re.search(r"step 7: loss spike: .* the batch is samples \[48, 56\)", text), text[-3000:]
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
