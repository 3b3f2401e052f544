"""Resumes that would change the run, two trainers on one --save, and the advice after a divergence.

Each row of ROWS resumes a copy of one base run (8 steps of 4 samples, checkpoints at 4 and 8) with
one changed flag: it is refused in one line naming the flag, the saved and the new value and the
way to override (exit 2, nothing written), or it continues correctly (the tests below the table
check how, against the uninterrupted base run or the scheduler's formula).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import tiny_data
from launchers import pretrain_main

MARKER = "latest_checkpointed_iteration.txt"
BASE = dict(train_iters=8, global_batch_size=4, save_interval=4, keep_last=0)  # lr 3e-3 -> 3e-4, warm-up 2 steps


@pytest.fixture(scope="module")
def base(data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "ckpt"
    tiny_data.train(1, data, root.parent / "base", save=str(root), **BASE)
    assert (root / MARKER).read_text().strip() == "8"
    return root


def _copy(base: Path, tmp_path: Path, latest: int | None = None) -> Path:
    """A copy of the base run; with `latest`, as if the run had stopped there."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(base, ckpt)
    if latest is not None:
        for folder in ckpt.glob("iter_*"):
            if int(folder.name[5:]) > latest:
                shutil.rmtree(folder)
        (ckpt / MARKER).write_text(str(latest))
    return ckpt


def _listing(ckpt: Path) -> dict[str, float]:
    return {str(p.relative_to(ckpt)): p.stat().st_mtime for p in ckpt.rglob("*")}


def _argv(data, ckpt: Path, **flags) -> list[str]:
    return tiny_data.train_args(data, **dict(BASE, save=str(ckpt), load=str(ckpt), **flags))


def _main(argv, capsys, monkeypatch) -> tuple[int, str, str]:
    """pretrain_flm.py in this process (no interpreter start): exit code, stdout, stderr."""
    monkeypatch.delenv("RANK", raising=False)
    capsys.readouterr()
    code = pretrain_main()(argv)
    out, err = capsys.readouterr()
    return code, out, err


CKPT = "{ckpt}/iter_0000008"
ROWS = [  # (changed flags, fragment of the one-line refusal)
    (dict(use_mup=True, no_load_optim=True),
     f"--use-mup: {CKPT} was trained without µP but the flags turn it on: µP changes the model's function and its "
     f"optimizer groups; pass --no-use-mup to continue the run, or --finetune"),
    (dict(use_mup=True), f"--use-mup: {CKPT} was trained without µP but the flags turn it on"),
    (dict(global_batch_size=8),
     f"--lr-warmup-iters: {CKPT} was trained with a warm-up of 8 samples but the flags give 16 samples (also changed: "
     f"--train-iters), because --global-batch-size changed from 4 to 8 and --lr-warmup-iters and --train-iters count "
     f"steps of it; pass --lr-warmup-samples 8 --train-samples 32 to continue its schedule"),
    (dict(seq_length=32),
     f"--seq-length: {CKPT} was trained with --seq-length 64 but the flags give 32: its data position (32 samples) "
     f"counts samples of 64 tokens and would point at other data; pass --seq-length 64 to continue, or "
     f"--start-new-stage"),
    (dict(train_iters=4),
     f"--train-iters=4 (16 samples) ends before the checkpoint {CKPT} (iteration 8, 32 samples): give at least "
     f"--train-iters 8 to continue it"),
    (dict(ckpt_step=4),
     "--save {ckpt} holds iterations newer than the one this run starts from (4): 8; this run's saves would replace "
     "them. Resume the newest with --load {ckpt} (without --ckpt-step), pass another --save, or add "
     "--discard-newer-checkpoints"),
    (dict(lr=1e-3),
     f"--lr: {CKPT} was trained with --lr 0.003 but the flags give 0.001; pass --lr 0.003 to continue its schedule "
     f"(in samples: any --global-batch-size keeps it), or add --override-opt_param-scheduler to apply the new "
     f"schedule from sample 32"),
    (dict(train_iters=16),  # the LR decays over all train samples: training longer would stretch it
     f"--train-iters: {CKPT} was trained with the LR decaying over 32 samples but the flags give 64 samples; pass "
     f"--train-samples 32 to continue"),
]


@pytest.mark.parametrize("flags, fragment", ROWS, ids=[",".join(r[0]) for r in ROWS])
def test_a_resume_that_changes_the_run_is_refused_in_one_line(base, data, tmp_path, capsys, monkeypatch, flags,
                                                              fragment):
    ckpt = _copy(base, tmp_path)
    before = _listing(ckpt)
    code, out, err = _main(_argv(data, ckpt, **flags), capsys, monkeypatch)
    assert code == 2, out[-2000:] + err[-2000:]
    assert fragment.format(ckpt=ckpt) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert "step " not in out  # refused before the first step
    assert _listing(ckpt) == before  # nothing written, nothing removed, no lock left behind


def test_train_iters_equal_to_the_checkpoint_trains_nothing_and_writes_nothing(base, data, tmp_path, capsys,
                                                                               monkeypatch):
    ckpt = _copy(base, tmp_path)
    before = _listing(ckpt)
    code, out, err = _main(_argv(data, ckpt), capsys, monkeypatch)
    assert code == 0, err[-2000:]
    assert "the run is complete at iteration 8: nothing left to train" in out
    assert _listing(ckpt) == before


def _metrics(path: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["iteration"]: r for r in rows if "train/loss" in r}


def test_a_larger_batch_continues_the_schedule_in_samples(base, data, tmp_path, capsys, monkeypatch):
    """4 -> 8 samples per step from iteration 4 (sample 16), the schedule given in samples: the run
    ends at sample 32 after 2 steps, with the LR of the uninterrupted run at the same samples."""
    ckpt = _copy(base, tmp_path, latest=4)
    metrics = tmp_path / "m.jsonl"
    argv = _argv(data, ckpt, global_batch_size=8, train_iters=None, lr_warmup_iters=None, train_samples=32,
                 lr_warmup_samples=8, metrics_jsonl=str(metrics))
    code, out, err = _main(argv, capsys, monkeypatch)
    assert code == 0, err[-2000:]
    assert ("--global-batch-size 4 -> 8: the LR schedule and the data position count samples, so the run continues "
            "at sample 16 and ends after 2 more steps (16 samples)") in out
    resumed = _metrics(metrics)
    reference = _metrics(base.parent / "base" / "metrics.jsonl")  # the uninterrupted run, 4 samples per step
    assert [r["train/consumed_samples"] for r in resumed.values()] == [24, 32]
    assert resumed[5]["train/lr"] == pytest.approx(reference[6]["train/lr"], rel=1e-12)  # both at sample 24
    assert resumed[6]["train/lr"] == pytest.approx(3e-4, rel=1e-12) == reference[8]["train/lr"]  # --min-lr at the end
    assert (ckpt / MARKER).read_text() == "6"


def test_override_opt_param_scheduler_applies_the_new_lr_from_the_saved_sample(base, data, tmp_path, capsys,
                                                                               monkeypatch):
    ckpt = _copy(base, tmp_path, latest=4)
    metrics = tmp_path / "m.jsonl"
    code, out, err = _main(_argv(data, ckpt, lr=1e-3, override_opt_param_scheduler=True, metrics_jsonl=str(metrics),
                                 exit_interval=1), capsys, monkeypatch)
    assert code == 0, err[-2000:]
    assert "--override-opt_param-scheduler: the LR schedule of the flags applies from sample 16 (--lr 0.003 -> 0.001)" \
        in out
    # Cosine from 1e-3 to 3e-4 over samples 8..32, read after the step at sample 20 (Megatron's formula).
    want = 3e-4 + (1e-3 - 3e-4) * 0.5 * (1 + math.cos(math.pi * (20 - 8) / (32 - 8)))
    assert _metrics(metrics)[5]["train/lr"] == pytest.approx(want, rel=1e-9)


def test_discard_newer_checkpoints_removes_them_only_once_the_run_has_saved(base, data, tmp_path, capsys,
                                                                             monkeypatch):
    ckpt = _copy(base, tmp_path)
    code, out, err = _main(_argv(data, ckpt, ckpt_step=4, discard_newer_checkpoints=True, save_interval=1,
                                 exit_interval=1), capsys, monkeypatch)
    assert code == 0, err[-2000:]
    assert f"--discard-newer-checkpoints: iterations 8 in {ckpt} are removed at this run's first save" in out
    assert sorted(p.name for p in ckpt.iterdir()) == ["iter_0000004", "iter_0000005", MARKER]
    assert (ckpt / MARKER).read_text() == "5"


# --- one writer per --save ---------------------------------------------------------------------------

def test_a_second_trainer_on_the_same_save_is_refused_before_it_trains(data, tmp_path):
    """Two real trainer processes: the second stops in one line naming the first; the first goes on,
    is stopped by SIGTERM, saves, and its checkpoint is the latest, complete, with no lock left."""
    save = tmp_path / "ckpt"
    first_metrics = tmp_path / "first.jsonl"
    args = tiny_data.train_args(data, **dict(BASE, train_iters=5000, save=str(save), load=str(save), save_interval=50))
    first = subprocess.Popen(tiny_data.command(1, args + ["--metrics-jsonl", str(first_metrics)]), env=tiny_data.ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not (first_metrics.exists() and first_metrics.read_text()):  # it holds the lock and trains
            assert first.poll() is None and time.time() < deadline, first.stdout.read()[-3000:]
            time.sleep(0.2)
        second = subprocess.run(tiny_data.command(1, args + ["--metrics-jsonl", str(tmp_path / "second.jsonl")]),
                                capture_output=True, text=True, env=tiny_data.ENV, timeout=300)
        assert first.poll() is None, "the first trainer must still be running"
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=300)
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"--save {save} is in use by another trainer (pid {first.pid} on host {socket.gethostname()}" \
        in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    assert "step " not in second.stdout and not (tmp_path / "second.jsonl").exists()
    assert first.returncode == 0, out[-3000:]
    last = max(_metrics(first_metrics))
    assert (save / MARKER).read_text() == str(last)  # the first trainer's own last iteration
    assert sorted(p.name for p in save.iterdir())[-1] == MARKER and not list(save.glob("*.partial"))
    assert not (save / "flm_save.lock").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _write_lock(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    holder = dict(host=socket.gethostname(), pid=_dead_pid(), started=None, job=None, since="earlier")
    holder.update(fields)
    (folder / "flm_save.lock").write_text(json.dumps(holder))


def test_a_stale_lock_is_taken_over_with_a_warning(data, tmp_path, capsys, monkeypatch):
    save = tmp_path / "ckpt"
    _write_lock(save)
    argv = tiny_data.train_args(data, **dict(BASE, train_iters=1, lr_warmup_iters=0, save=str(save)))
    code, out, err = _main(argv, capsys, monkeypatch)
    assert code == 0, err[-2000:]
    assert f"warning: took over the stale lock {save}/flm_save.lock: its process (pid" in out and "is gone" in out
    assert (save / MARKER).read_text() == "1" and not (save / "flm_save.lock").exists()


def test_the_lock_names_its_holder_and_knows_stale_from_live(tmp_path, monkeypatch):
    from flm_ext.checkpoint import lock

    folder = tmp_path / "save"
    _write_lock(folder, host="node-17", pid=os.getpid(), job="4242")
    with pytest.raises(lock.SaveFolderInUse, match=r"in use by another trainer \(pid \d+ on host node-17, job 4242"):
        lock.acquire(str(folder))  # another host: its process cannot be checked, so it counts as live
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the same job, requeued onto another node: takes over
    assert "earlier attempt of this job" in lock.acquire(str(folder))
    assert lock.acquire(str(folder)) is None  # this process holds it already
    assert lock.read_holder(str(folder / "flm_save.lock")).pid == os.getpid()
    lock.release(str(folder))
    assert not (folder / "flm_save.lock").exists()
    _write_lock(folder, pid=os.getppid())  # a live process on this host
    with pytest.raises(lock.SaveFolderInUse):
        lock.acquire(str(folder))
    lock.release(str(folder))  # never another trainer's lock
    assert (folder / "flm_save.lock").exists()
    _write_lock(folder, pid=os.getppid(), started="1")  # a live pid, but another process than the holder
    assert "is gone" in lock.acquire(str(folder))


# --- the advice after a divergence ----------------------------------------------------------------------

def test_after_a_divergence_the_advice_resumes_the_last_healthy_weights(base, data, tmp_path, capsys, monkeypatch):
    """Resume the healthy base run at a learning rate of 60: the loss explodes, saves go on (the weights are
    finite) until the gradient norm overflows. The message names iteration 8, the last checkpoint saved
    before the explosion; following it (with a lower --lr) resumes weights whose next loss is the healthy
    one, and the diverged iterations are removed once the new branch saves."""
    ckpt = _copy(base, tmp_path)
    diverged = tmp_path / "diverged.jsonl"
    argv = _argv(data, ckpt, train_iters=60, lr=60, min_lr=0, override_opt_param_scheduler=True, save_interval=3,
                 max_consecutive_skips=1)
    code, out, err = _main(argv + ["--metrics-jsonl", str(diverged)], capsys, monkeypatch)
    assert code == 1, out[-3000:] + err[-3000:]
    losses = {n: r["train/loss"] for n, r in _metrics(diverged).items()}
    assert losses[10] > 10 * losses[9]  # the first step at lr 60 already blew the weights up
    assert f"the newest checkpoint with healthy weights is iteration 8 in {ckpt} (loss " in err, err
    assert "later iterations are not: 9 (loss" in err
    advice = err.split("Resume from it with a lower --lr: ")[1].split(" (or check the data)")[0]
    assert advice == (f"--load {ckpt} --ckpt-step 8 --discard-newer-checkpoints --lr <lower> "
                      f"--override-opt_param-scheduler")
    saved_after = sorted(int(p.name[5:]) for p in ckpt.glob("iter_*"))
    assert saved_after[:3] == [4, 8, 9] and len(saved_after) > 3

    resumed = tmp_path / "resumed.jsonl"
    follow = argv + advice.replace("<lower>", "1e-3").split() + ["--metrics-jsonl", str(resumed), "--exit-interval",
                                                                 "3"]
    code, out, err = _main(follow, capsys, monkeypatch)
    assert code == 0, out[-3000:] + err[-3000:]
    after = {n: r["train/loss"] for n, r in _metrics(resumed).items()}
    assert sorted(after) == [9, 10, 11]
    assert after[9] == pytest.approx(losses[9], abs=1e-6)  # the weights of iteration 8, on the same batch
    assert all(math.isfinite(v) and v < 1.5 * losses[9] for v in after.values()), after
    assert sorted(int(p.name[5:]) for p in ckpt.glob("iter_*")) == [4, 8, 9, 11]  # the diverged ones are gone


def test_mup_is_compared_by_its_width_multiplier():
    """m = hidden / base width is what µP scales by: a changed base width is refused, an imported checkpoint
    that records m itself (and the default base width) is the same run, --finetune only warns."""
    from flm_ext.config import ConfigError, FLMConfig
    from flm_ext.training.contract import check_mup

    model = FLMConfig(num_layers=2, hidden_size=64, num_attention_heads=4, use_mup=True, mup_base_width=32)
    assert check_mup(model, model, "CKPT", finetune=False) == []
    imported = model.replace(mup_base_width=256, mup_width_mult_override=2.0)
    assert check_mup(imported, model, "CKPT", finetune=False) == []
    with pytest.raises(ConfigError, match=r"^--mup-base-width: CKPT was trained with the µP width multiplier m = 2 "
                                          r"but the flags give 4 \(--hidden-size 64 / --mup-base-width 16\).*pass "
                                          r"--mup-base-width 32 to continue"):
        check_mup(model, model.replace(mup_base_width=16), "CKPT", finetune=False)
    with pytest.raises(ConfigError, match=r"^--mup-output-mult: CKPT was trained with --mup-output-mult 2.0 but the "
                                          r"flags give 1.0"):
        check_mup(model, model.replace(mup_output_mult=1.0), "CKPT", finetune=False)
    with pytest.raises(ConfigError, match=r"was trained with µP \(--use-mup\) but the flags turn it off: .* pass "
                                          r"--use-mup to continue"):
        check_mup(model, model.replace(use_mup=False), "CKPT", finetune=False)
    [warning] = check_mup(model, model.replace(use_mup=False), "CKPT", finetune=True)
    assert warning.startswith("warning: --finetune: CKPT was trained with µP")
