"""--async-save and --ckpt-fully-parallel-save: crash safety, no orphaned writer processes after a
SIGKILL, and resumes that continue exactly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tiny_data
from tiny_data import train

REPO = Path(__file__).resolve().parents[1]
ENV = dict(tiny_data.ENV)


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren, ...), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_worker_only(cmd: list[str], ready, env: dict, timeout: float = 300) -> tuple[list[str], set[int]]:
    """Start `cmd`, wait for an output line with `ready(line)`, SIGKILL that one process (not its
    session: its children must go by themselves); returns (lines, the children it had)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines, children = [], set()
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line)
            if ready(line):
                children = descendants(proc.pid)
                proc.kill()
                break
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
        proc.wait(timeout=60)
        assert children, "the kill point was never reached:\n" + "".join(lines)[-3000:]
        deadline = time.monotonic() + 20
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        return lines, {p for p in children if alive(p)}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, so no test leaves processes behind
        except ProcessLookupError:
            pass


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return "?"


def test_a_kill_during_an_async_save_leaves_the_previous_checkpoint_and_no_writer(tmp_path,
                                                                                  megatron_single_process):
    root = tmp_path / "ckpt"
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    lines, orphans = kill_worker_only([sys.executable, str(REPO / "tests" / "kill_during_async_save.py"), str(root)],
                                      lambda line: line.startswith("async save 2 in flight"), env)
    assert any(s.startswith("saved 1") for s in lines), "".join(lines)[-3000:]
    assert not orphans, {p: command_line(p) for p in orphans}
    # The writer had written its shards, but iteration 2 was never published.
    assert any(n.startswith("__0_") for n in os.listdir(root / "iter_0000002.partial"))
    assert not (root / "iter_0000002").exists()
    assert (root / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    import kill_during_save

    kill_during_save.check_iteration_1_loads(root)


def test_a_synchronous_save_is_written_in_the_trainer_process(tmp_path, megatron_single_process):
    """No per-bucket writer processes for a synchronous save (a fork from a trainer running other
    threads can copy a held lock and hang): with megatron's forked writer made to fail, the save
    still completes, and it loads back the saved weights."""
    import kill_during_save
    from distributed import spawn

    spawn(kill_during_save.synchronous_save_worker, 1, tmp_path)
    kill_during_save.check_iteration_1_loads(tmp_path)


def test_a_killed_trainer_leaves_no_checkpoint_writer_behind(data, tmp_path):
    """kill -9 of a pretrain_flm.py worker right after a (synchronous) save: megatron's results-queue
    Manager and any writer die with it."""
    args = tiny_data.train_args(data, save=str(tmp_path / "ckpt"), save_interval=1, train_iters=200,
                                log_interval=1)
    cmd = tiny_data.command(1, args)
    lines, orphans = kill_worker_only(cmd, lambda line: line.startswith("saved checkpoint"), ENV)
    assert not orphans, {p: command_line(p) for p in orphans}


@pytest.mark.slow
def test_async_save_resumes_exactly_like_a_synchronous_save(data, tmp_path):
    """Checkpoints written asynchronously (a save every 2 steps, published while training goes on)
    resume to the same losses as an uninterrupted run: the reference is the same run without saves."""
    ref = train(1, data, tmp_path / "ref", train_iters=8)
    first = train(1, data, tmp_path / "a", train_iters=8, exit_interval=5, save=str(tmp_path / "ckpt"),
                  save_interval=2, async_save=True, keep_last=0)
    log = (tmp_path / "a" / "stdout.log").read_text()
    assert "started asynchronous save of checkpoint" in log and "asynchronous save complete" in log, log[-3000:]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["iter_0000002", "iter_0000004", "iter_0000005",
                                                     "latest_checkpointed_iteration.txt"]
    second = train(1, data, tmp_path / "b", train_iters=8, load=str(tmp_path / "ckpt"), save=str(tmp_path / "ckpt"),
                   async_save=True)
    assert first == {i: ref[i] for i in range(1, 6)}
    assert sorted(second) == [6, 7, 8]
    for i in (6, 7, 8):
        assert abs(second[i] - ref[i]) <= 1e-6, (i, second[i], ref[i])
    from flm_ext.checkpoint import verify_checkpoint

    verify_checkpoint(str(tmp_path / "ckpt" / "iter_0000008"))


@pytest.mark.slow
def test_fully_parallel_save_at_dp2_reloads_to_the_same_losses(data, tmp_path):
    """DP=2 with --ckpt-fully-parallel-save (each replica writes a share; with --async-save too):
    the resumed run's losses equal the uninterrupted run's."""
    ref = train(2, data, tmp_path / "ref", train_iters=6)
    train(2, data, tmp_path / "a", train_iters=6, exit_interval=3, save=str(tmp_path / "ckpt"),
          ckpt_fully_parallel_save=True, async_save=True)
    shards = {n.split("_")[2] for n in os.listdir(tmp_path / "ckpt" / "iter_0000003") if n.endswith(".distcp")}
    assert shards == {"0", "1"}, os.listdir(tmp_path / "ckpt" / "iter_0000003")  # both replicas wrote a share
    second = train(2, data, tmp_path / "b", train_iters=6, load=str(tmp_path / "ckpt"))
    for i in (4, 5, 6):
        assert abs(second[i] - ref[i]) <= 1e-6, (i, second[i], ref[i])


@pytest.mark.slow
def test_a_failed_async_write_stops_the_run_and_keeps_the_previous_checkpoint(data, tmp_path):
    """The writer child hits a file-size limit (EFBIG) while the trainer goes on: when the save is
    finalised the run stops with one line naming the condition (exit 1), the partial folder is
    removed and the previous checkpoint stays the latest."""
    import resource

    ckpt = tmp_path / "ckpt"
    train(1, data, tmp_path / "base", train_iters=3, save=str(ckpt), save_interval=3)
    shard = max(os.path.getsize(p) for p in (ckpt / "iter_0000003").glob("*.distcp"))

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (shard // 2, shard // 2))

    # One more step than the base run: a longer schedule on resume is refused unless asked for.
    args = tiny_data.train_args(data, train_iters=4, save=str(ckpt), load=str(ckpt), async_save=True,
                                override_opt_param_scheduler=True)
    proc = subprocess.run(tiny_data.command(1, args), capture_output=True, text=True, env=ENV, timeout=300,
                          preexec_fn=limit_file_size)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"started asynchronous save of checkpoint {ckpt}/iter_0000004" in out, out[-3000:]
    assert f"saving {ckpt}/iter_0000004 failed: file too large" in out, out[-3000:]
    assert "iteration 3 stays the latest checkpoint" in out and "Traceback" not in out, out[-3000:]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert not (ckpt / "iter_0000004").exists() and not (ckpt / "iter_0000004.partial").exists()
