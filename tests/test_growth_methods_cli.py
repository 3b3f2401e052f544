"""Every growth operator through tools/grow_checkpoint.py on a checkpoint pretrain_flm.py wrote at
TP=2: --verify's numbers, the growth record, training from the grown checkpoint at TP=2 / PP=2
(Adam state included), a resume at TP=1 that matches, and tools/export_hf.py --verify (the export
against the trainer's model)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tiny_data import run_tool, train

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
TRAIN_ITERS, GROWN_AT, SAVED_AT = 8, 4, 6
# method -> (grow flags, the grown model's trainer flags, training layout)
GROWTHS = {
    "clone": (["--hidden-size", "128", "--num-attention-heads", "8", "--ffn-hidden-size", "512", "--clone-noise",
               "0.001"], dict(hidden_size=128, num_attention_heads=8, ffn_hidden_size=512),
              dict(tensor_model_parallel_size=2)),
    "stack": (["--stack-factor", "2"], dict(num_layers=4), dict(pipeline_model_parallel_size=2)),
    "random": (["--num-layers", "3", "--hidden-size", "96", "--num-attention-heads", "6", "--ffn-hidden-size", "384"],
               dict(num_layers=3, hidden_size=96, num_attention_heads=6, ffn_hidden_size=384),
               dict(tensor_model_parallel_size=2)),
}


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return run_tool(name, *args, env=ENV)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("method_runs")


@pytest.fixture(scope="module")
def old_run(data, runs):
    """The old model at TP=2, saved at GROWN_AT, then one step on: its loss there is the old model's loss
    on the batch the grown runs see first (the same weights, Adam state and batch as a resume)."""
    losses = train(2, data, runs / "old", train_iters=TRAIN_ITERS, tensor_model_parallel_size=2,
                   save=str(runs / "old" / "ckpt"), save_interval=GROWN_AT, exit_interval=GROWN_AT + 1)
    return runs / "old" / "ckpt" / f"iter_{GROWN_AT:07d}", losses[GROWN_AT + 1]


@pytest.fixture(scope="module")
def old(old_run):
    return old_run[0]


@pytest.fixture(scope="module")
def next_loss(old_run):
    return old_run[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", list(GROWTHS))
def test_grown_checkpoint_verifies_trains_resumes_and_exports(data, runs, old, next_loss, method):
    grow_flags, sizes, layout = GROWTHS[method]
    grown = runs / f"grown_{method}"
    proc = _tool("grow_checkpoint.py", "--load", str(old), "--save", str(grown), "--method", method, *grow_flags,
                 "--verify", "--progress-interval", "0")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    diff = float(re.search(r"^max abs logit diff: (\S+)$", proc.stdout, re.M).group(1))
    jump = float(re.search(r"^loss jump: (\S+) ", proc.stdout, re.M).group(1))
    common = torch.load(grown / f"iter_{GROWN_AT:07d}" / "common.pt", weights_only=False)
    record = common["flm"]["grown_from"]
    assert record["method"] == method and "growth" not in common["flm"]  # no MSG masks to ramp
    assert record["function_preserving"] == (method == "clone")
    if method == "clone":
        assert diff <= 1e-6 and abs(jump) <= 1e-6 and record["clone_noise"] == 0.001
    else:
        assert diff > 1e-2 and abs(jump) > 1e-3

    # Training goes on from the grown weights and Adam state, at TP=2 or PP=2, saving on the way.
    run = runs / f"train_{method}"
    losses = train(2, data, run, train_iters=TRAIN_ITERS, load=str(grown), save=str(run / "ckpt"),
                   save_interval=SAVED_AT, **sizes, **layout)
    assert sorted(losses) == list(range(GROWN_AT + 1, TRAIN_ITERS + 1))
    first = losses[GROWN_AT + 1]
    if method == "clone":
        assert abs(first - next_loss) <= 1e-4, (first, next_loss)  # the old function, on the same batch
    else:
        assert abs(first - next_loss) > 1e-3, (first, next_loss)  # the jump, measured by training too
    # ... and resumes at TP=1 from the mid-way save with the same losses.
    resumed = train(1, data, runs / f"resume_{method}", train_iters=TRAIN_ITERS,
                    load=str(run / "ckpt" / f"iter_{SAVED_AT:07d}"), **sizes)
    assert sorted(resumed) == list(range(SAVED_AT + 1, TRAIN_ITERS + 1))
    for step, loss in resumed.items():
        assert abs(loss - losses[step]) <= 1e-5, (step, loss, losses[step])

    # The grown checkpoint exports to transformers and computes what the trainer's model does.
    export = _tool("export_hf.py", "--load", str(grown), "--save", str(runs / f"hf_{method}"), "--tokenizer-type",
                   "HuggingFaceTokenizer", "--tokenizer-model", data["tokenizer"], "--verify")
    assert export.returncode == 0, (export.stdout + export.stderr)[-4000:]
    assert float(re.search(r"^max abs logit diff: (\S+)$", export.stdout, re.M).group(1)) <= 1e-5
