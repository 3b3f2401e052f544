"""Hangs and time limits: the watchdog names a SIGSTOPped rank with stacks within its timeout and
the run exits non-zero; --exit-duration-in-mins saves and exits 0; the per-rank step-time report."""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch.distributed as dist

import tiny_data
from flm_ext.training.monitoring import describe_spread
from flm_ext.training.watchdog import HANG_EXIT_CODE, Watchdog

ENV = dict(tiny_data.ENV)


def test_watchdog_names_the_silent_rank_and_the_one_behind():
    """In-process, with a store of its own: rank 1's heartbeat stops, rank 2 keeps beating at an older
    step; the watchdog of rank 0 (no step for its timeout) names both and exits with its code."""
    store = dist.HashStore()
    store.set("flm_watchdog/1", "7 12 training")  # written once, never again: silent
    exits, out = [], io.StringIO()
    dog = Watchdog(1.0, store=store, rank=0, world_size=3, poll_s=0.1, exit=exits.append, out=out)
    stop = threading.Event()

    def rank2():
        beat = 0
        while not stop.wait(0.05):
            beat += 1
            store.set("flm_watchdog/2", f"{beat} 11 training")

    threading.Thread(target=rank2, daemon=True).start()
    start = time.monotonic()
    dog.start(12)
    while not exits and time.monotonic() - start < 10:
        time.sleep(0.05)
    stop.set()
    took = time.monotonic() - start
    assert exits == [HANG_EXIT_CODE] and 1.0 <= took < 2.0, (exits, took)
    text = out.getvalue()
    assert re.search(r"not responding: rank 1 \(silent for \d+ s, last finished step 12, was training\)", text), text
    assert "behind at an older step: rank 2 (step 11)" in text and "waiting for them: rank 0" in text, text
    assert "Thread" in text and "test_watchdog" in text, text  # this thread's stack is in the dump


def test_a_paused_phase_waits_past_the_timeout_but_not_past_its_own_limit():
    """A save (paused) outlasts the step timeout (0.3 s) without firing, but one stuck past its own
    limit (2 s) is named as a hang, with the phase; without a limit a pause never fires."""
    def run(paused_limit_s, wait_s):
        store, exits, out = dist.HashStore(), [], io.StringIO()
        dog = Watchdog(0.3, paused_limit_s=paused_limit_s, store=store, rank=0, world_size=1, poll_s=0.05,
                       exit=exits.append, out=out)
        dog.start(4)
        start = time.monotonic()
        with dog.paused("saving"):
            while not exits and time.monotonic() - start < wait_s:
                time.sleep(0.02)
        fired_after = time.monotonic() - start
        dog.stop()
        return exits, fired_after, out.getvalue()

    exits, fired_after, text = run(2.0, 6.0)
    assert exits == [HANG_EXIT_CODE] and 2.0 <= fired_after < 3.5, (exits, fired_after)
    assert "(saving for longer than its limit of 2 s) after step 4" in text, text
    exits, _, _ = run(None, 1.0)  # 3x the step timeout, paused without a limit: no hang
    assert exits == []


def test_step_time_spread_names_the_slowest_and_fastest_rank():
    line = describe_spread([0.2, 0.1, 0.4, 0.2])
    assert line == ("rank compute per step: min 0.100 s (rank 1), median 0.200 s, max 0.400 s (rank 2), "
                    "spread 4.00x")


def _rank_pid(parent: int, rank: int, timeout: float = 120) -> int:
    """The pid of torchrun's worker with RANK=rank."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                    continue
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(entry)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under {parent}")


@pytest.mark.slow
def test_a_sigstopped_rank_is_named_with_stacks_and_the_run_exits_nonzero(data, tmp_path):
    timeout_s = 6.0
    args = tiny_data.train_args(data, train_iters=500, log_interval=1, hang_timeout_minutes=timeout_s / 60)
    proc = subprocess.Popen(tiny_data.command(2, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV, start_new_session=True)
    lines, stopped_at, named_at, victim = [], None, None, None
    try:
        for line in proc.stdout:
            lines.append(line)
            if stopped_at is None and line.startswith("step       3/"):
                victim = _rank_pid(proc.pid, 1)
                os.kill(victim, signal.SIGSTOP)
                stopped_at = time.monotonic()
            if stopped_at is not None and named_at is None and line.startswith("watchdog (rank 0)"):
                named_at = time.monotonic()
                os.kill(victim, signal.SIGCONT)  # let torchrun's SIGTERM reach it: the run ends sooner
        proc.wait(timeout=180)
    finally:
        if victim is not None:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = "".join(lines)
    assert stopped_at is not None and named_at is not None, text[-4000:]
    # Named within the watchdog's time: its timeout, one poll, and slack for a loaded machine.
    assert named_at - stopped_at <= timeout_s + 4.0, (named_at - stopped_at, text[-4000:])
    report = next(line for line in lines if line.startswith("watchdog (rank 0)"))
    assert re.search(r"not responding: rank 1 \(silent for \d+ s", report), report
    assert "Python stacks of rank 0 follow" in report
    dump = text[text.index(report):]
    assert re.search(r"Thread 0x[0-9a-f]+ \(most recent call first\)", dump), dump[:3000]
    assert "trainer.py" in dump  # rank 0's main thread, waiting in the step rank 1 never joined
    assert proc.returncode != 0, text[-3000:]


def test_exit_duration_saves_and_exits_zero(data, tmp_path):
    ckpt = tmp_path / "ckpt"
    args = tiny_data.train_args(data, train_iters=100000, log_interval=1, save=str(ckpt),
                                exit_duration_in_mins=0.05)
    proc = subprocess.run(tiny_data.command(1, args), capture_output=True, text=True, env=ENV, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    stop = re.search(r"--exit-duration-in-mins 0.05 reached at iteration (\d+): saving and stopping", out)
    assert stop, out[-3000:]
    iteration = int(stop.group(1))
    assert 0 < iteration < 100000
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(iteration)
    assert f"saved checkpoint {ckpt}/iter_{iteration:07d} (end of run)" in out


def _straggler_worker(rank, world_size, out, delay):
    """DP=2 steps where rank 1's forward is slower; also reports the process groups' timeouts."""
    import datetime
    import time as clock

    import torch
    from megatron.core import parallel_state

    from flm_ext.config import FLMConfig, ParallelConfig
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.runtime import initialize_distributed
    from flm_ext.training.engine import build_optimizer, forward_step, train_step, wrap_ddp
    from flm_ext.training.optim import OptimConfig
    from flm_ext.training.monitoring import StepTimer

    initialize_distributed(ParallelConfig(), seed=1, timeout_minutes=7)
    timeouts = [group._get_backend(torch.device("cpu")).options._timeout
                for group in (dist.distributed_c10d._get_default_group(), parallel_state.get_data_parallel_group())]
    assert timeouts == [datetime.timedelta(minutes=7)] * 2, timeouts
    cfg = FLMConfig(num_layers=1, hidden_size=32, num_attention_heads=2, seq_length=16, vocab_size=128)
    model = wrap_ddp(build_model_chunks(cfg))
    optimizer = build_optimizer(model, cfg, OptimConfig())
    timer = StepTimer(model)

    def step_fn(data_iterator, chunk):
        if rank == 1:
            clock.sleep(delay)
        return forward_step(data_iterator, chunk)

    ids = torch.randint(0, cfg.vocab_size, (1, cfg.seq_length + 1), generator=torch.Generator().manual_seed(rank))
    batch = {"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": torch.ones(1, cfg.seq_length),
             "position_ids": torch.arange(cfg.seq_length)[None]}
    for _ in range(3):
        timer.start_step()
        train_step(model, optimizer, iter([batch, batch]), num_microbatches=2, seq_length=cfg.seq_length,
                   micro_batch_size=1, step_fn=step_fn)
    torch.save(timer.spread(), os.path.join(out, f"times_{rank}.pt"))


@pytest.mark.slow
def test_the_step_time_spread_names_a_slow_rank_and_the_timeout_reaches_every_group(tmp_path):
    """Rank 1 sleeps 0.25 s per micro-batch (2 per step): its compute time per step is >= 0.5 s,
    rank 0's (which waits for it in the gradient reduction, outside the timed span) is shorter by
    most of that; both ranks get the same list. --distributed-timeout-minutes' value (7) is the
    timeout of torch's default group and of megatron's groups."""
    import torch

    from distributed import spawn

    spawn(_straggler_worker, 2, tmp_path, 0.25)
    times = [torch.load(tmp_path / f"times_{rank}.pt") for rank in (0, 1)]
    assert times[0] == times[1]
    fast, slow = times[0]
    assert slow >= 0.5 and slow - fast >= 0.4, times[0]
    assert describe_spread(times[0]).endswith(f"max {slow:.3f} s (rank 1), spread {slow / fast:.2f}x")
