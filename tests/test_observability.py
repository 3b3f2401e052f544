"""MFU and per-rank throughput as scalars (TensorBoard, JSONL) and the W&B sink: with a stand-in
`wandb` module (the real package is an optional extra, not installed by `make setup`), and with the
real one in offline mode where the extra is installed."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import tiny_data

REPO = Path(__file__).resolve().parents[1]

STAND_IN = '''
import json, os

class Run:
    def __init__(self, project, name, dir, config):
        self.path = os.path.join(dir, "stand_in_wandb.jsonl")
        self._write({"init": {"project": project, "name": name, "config_keys": sorted(config)}})

    def _write(self, row):
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\\n")

    def log(self, values, step):
        self._write({"step": step, "values": values})

    def finish(self):
        self._write({"finished": True})

def init(project=None, name=None, dir=None, config=None):
    assert os.environ.get("WANDB_MODE") == "offline"
    return Run(project, name, dir, config or {})
'''


@pytest.mark.slow
def test_mfu_per_rank_throughput_and_wandb(data, tmp_path):
    (tmp_path / "stand_in" / "wandb").mkdir(parents=True)
    (tmp_path / "stand_in" / "wandb" / "__init__.py").write_text(STAND_IN)
    metrics, tb, wb = tmp_path / "metrics.jsonl", tmp_path / "tb", tmp_path / "wandb_dir"
    args = tiny_data.train_args(data, train_iters=4, log_interval=2, peak_tflops=0.5, tensorboard_dir=str(tb),
                                metrics_jsonl=str(metrics), wandb_project="flm-test", wandb_exp_name="tiny",
                                wandb_save_dir=str(wb))
    env = dict(tiny_data.ENV, WANDB_MODE="offline",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "stand_in"), str(REPO)]))
    code, output = tiny_data.run_stacks_on_timeout(tiny_data.command(2, args), env=env)
    assert code == 0, output[-8000:]
    rows: dict[int, dict] = {}
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["iteration"], {}).update(row)
    for step in (2, 4):
        row = rows[step]
        assert abs(row["train/mfu"] - row["train/tflops"] / 0.5) < 1e-12  # achieved / --peak-tflops
        tokens = 8 * 64 / 2  # global batch x sequence, per data-parallel replica
        for rank in (0, 1):
            compute = row[f"ranks/compute_s/rank_{rank}"]
            assert 0 < compute and abs(row[f"ranks/tokens_per_s/rank_{rank}"] - tokens / compute) < 1e-6
        spread = max(row["ranks/compute_s/rank_0"], row["ranks/compute_s/rank_1"]) / min(
            row["ranks/compute_s/rank_0"], row["ranks/compute_s/rank_1"])
        assert abs(row["ranks/compute_spread"] - spread) < 1e-12
    assert "rank compute per step: min" in output
    # W&B got the same scalars, by step, from rank 0 only, and the run was finished.
    logged = [json.loads(line) for line in (wb / "stand_in_wandb.jsonl").read_text().splitlines()]
    assert logged[0]["init"]["project"] == "flm-test" and logged[0]["init"]["name"] == "tiny"
    assert "ops" in logged[0]["init"]["config_keys"] and logged[-1] == {"finished": True}
    by_step: dict[int, dict] = {}
    for entry in logged[1:-1]:
        by_step.setdefault(entry["step"], {}).update(entry["values"])
    assert by_step[4]["train/loss"] == rows[4]["train/loss"] and by_step[4]["train/mfu"] == rows[4]["train/mfu"]
    assert by_step[2]["ranks/tokens_per_s/rank_1"] == rows[2]["ranks/tokens_per_s/rank_1"]
    # TensorBoard has the new tags.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/mfu", "ranks/tokens_per_s/rank_0", "ranks/tokens_per_s/rank_1", "ranks/compute_spread"} <= tags
    assert [e.step for e in events.Scalars("train/mfu")] == [2, 4]


@pytest.mark.slow
def test_real_wandb_offline_writes_a_run_without_a_network(data, tmp_path):
    """With the optional extra installed (`pip install '.[wandb]'`; skipped without it)."""
    pytest.importorskip("wandb")
    args = tiny_data.train_args(data, train_iters=3, log_interval=1, wandb_project="flm-test",
                                wandb_exp_name="tiny", wandb_save_dir=str(tmp_path / "wb"))
    proc = subprocess.run(tiny_data.command(1, args), capture_output=True, text=True, timeout=600,
                          env=dict(tiny_data.ENV, WANDB_MODE="offline"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0, proc.stdout[-3000:]
