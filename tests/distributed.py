"""Run a function in N real processes on gloo (how the multi-process tests exercise TP/PP/DP).

Each worker gets (rank, world_size, out_dir, *args), has torch.distributed initialised from a free
local port, and may torch.save results into out_dir for the test to compare. A worker's
exception fails the test with that worker's traceback.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import traceback

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world_size, port, out_dir, args, errors, gpus=0):
    # One GPU per rank where the host has enough (LOCAL_RANK = rank); otherwise the ranks run on CPU
    # and gloo, as on a CPU-only machine, instead of two ranks asking for one device.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    if gpus < world_size:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        import torch

        torch.set_num_threads(1)
        fn(rank, world_size, out_dir, *args)
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        from flm_ext.runtime import destroy_distributed

        destroy_distributed()


def spawn(fn, world_size: int, out_dir, *args, timeout: float = 600.0) -> None:
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # megatron's "no TE/apex" warnings, per process
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    port = free_port()
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    procs = [ctx.Process(target=_entry, args=(fn, rank, world_size, port, str(out_dir), args, errors, gpus))
             for rank in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    if failures or any(p.exitcode != 0 for p in procs):
        detail = "\n".join(f"--- rank {rank} ---\n{tb}" for rank, tb in failures)
        raise AssertionError(f"distributed workers failed (exit codes {[p.exitcode for p in procs]}):\n{detail}")


def run_then_sigkill(cmd: list[str], env: dict, when=None, *, until=None, timeout: float = 600.0
                     ) -> tuple[int, list[str]]:
    """Start `cmd` and SIGKILL its whole session at a point the caller waits for: the first output
    line for which `when(line)` is true, or the first time `until()` (polled every 10 ms, e.g. "the
    latest-checkpoint marker names iteration 8") is true. Returns (exit code, lines read).

    The session, not just the process: megatron's checkpoint writer keeps a multiprocessing
    Manager child that would otherwise outlive the kill. A run that ends before the point, or
    does not reach it within `timeout` seconds, fails the test (it was never killed).
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: list[str] = []
    killed = threading.Event()

    def kill():
        if not killed.is_set():
            killed.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended on its own just now; the exit code tells
                pass

    def read():
        for line in proc.stdout:
            lines.append(line)
            if when is not None and not killed.is_set() and when(line):
                kill()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not killed.is_set() and proc.poll() is None and time.monotonic() < deadline:
        if until is not None and until():
            kill()
            break
        time.sleep(0.01)
    if not killed.is_set() and proc.poll() is None:  # timed out: do not leave it running
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    reader.join(timeout=60)
    assert killed.is_set(), (f"the run was not killed: it exited with {proc.returncode} or timed out before "
                             f"the kill point:\n" + "".join(lines)[-3000:])
    return proc.returncode, lines
