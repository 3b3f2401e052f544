"""Run a function in N real processes on gloo (how the multi-process tests exercise TP/PP/DP).

Each worker gets (rank, world_size, out_dir, *args), has torch.distributed initialised against a
TCPStore this process holds, and may torch.save results into out_dir for the test to compare. A
worker's exception fails the test with that worker's traceback; a worker still running at the
shared deadline fails it with that worker's Python stack.

Ports come from the OS at bind time, never from a bind-and-release probe another process can
race: the store here binds port 0 and the workers join it as clients (torchrun's own "agent
store"), `torchrun()` uses torch's standalone rendezvous (port 0), and a lone process needs no
port (`flm_ext.runtime.lone_process_env`).
"""
from __future__ import annotations

import datetime
import faulthandler
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

# In a worker started by spawn(): from here on (before torch is even imported), SIGUSR1 writes this
# process's Python stack where spawn() reads it, so a rank stuck anywhere, start-up included, is shown.
# (Set only while spawn() starts its workers; taken out here so that their own children do not see it.)
_STACKS_ENV = "FLM_TEST_SPAWN_STACKS"
if os.environ.get(_STACKS_ENV):
    faulthandler.register(signal.SIGUSR1, all_threads=True,
                          file=open(os.path.join(os.environ.pop(_STACKS_ENV), f"stack_{os.getpid()}.txt"), "w"))


from flm_ext.runtime import lone_process_env  # noqa: E402,F401  (the tests' children: the runtime's own list)

# Below pytest's own limit (pytest.ini: 600 s), so that a hung rank is reported here, with its stack.
DEFAULT_TIMEOUT = 540.0


def free_port() -> int:
    """A port that was free a moment ago: only for servers that must be told their port up front
    (an HTTP server, a multi-"node" launcher); rendezvous ports come from the OS at bind time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int) -> list[str]:
    """torch's launcher on one host with a standalone rendezvous: its store binds port 0 itself."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]


def _entry(fn, rank, world_size, port, out_dir, args, errors, gpus=0):
    # One GPU per rank where the host has enough (LOCAL_RANK = rank); otherwise the ranks run on CPU
    # and gloo, as on a CPU-only machine, instead of two ranks asking for one device.
    # The store is the parent's: every rank joins it as a client, as torchrun's workers join its agent's.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
                      TORCHELASTIC_USE_AGENT_STORE="True")
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
        if "flm_ext.runtime" in sys.modules:  # else nothing started: spare the megatron import
            sys.modules["flm_ext.runtime"].destroy_distributed()


def _hung_stacks(procs, stacks_dir: str) -> str:
    """SIGUSR1 to each rank still running (faulthandler writes its threads' stacks), then SIGKILL."""
    hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
    if not hung:
        return ""
    for rank in hung:
        os.kill(procs[rank].pid, signal.SIGUSR1)
    time.sleep(1.0)  # faulthandler writes from its signal handler, at once; a loaded machine may lag
    report = []
    for rank in hung:
        procs[rank].kill()
        path = os.path.join(stacks_dir, f"stack_{procs[rank].pid}.txt")
        stack = open(path, errors="replace").read() if os.path.exists(path) else "(none: it had not started)"
        report.append(f"--- rank {rank} was still running; its Python stack ---\n{stack}")
    return "\n".join(report)


def spawn(fn, world_size: int, out_dir, *args, timeout: float = DEFAULT_TIMEOUT) -> None:
    """`fn` in `world_size` processes; all of them must end within `timeout` seconds in total."""
    import torch.multiprocessing as mp
    from torch.distributed import TCPStore

    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # megatron's "no TE/apex" warnings, per process
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    store = TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=timeout))
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    stacks_dir = tempfile.mkdtemp(prefix="spawn_stacks_")
    procs = [ctx.Process(target=_entry, args=(fn, rank, world_size, store.port, str(out_dir), args, errors, gpus))
             for rank in range(world_size)]
    os.environ[_STACKS_ENV] = stacks_dir  # read by each worker when it imports this module
    try:
        for p in procs:
            p.start()
    finally:
        del os.environ[_STACKS_ENV]
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = _hung_stacks(procs, stacks_dir)
    for p in procs:
        p.join()
    del store
    shutil.rmtree(stacks_dir, ignore_errors=True)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    if hung or failures or any(p.exitcode != 0 for p in procs):
        detail = "\n".join(f"--- rank {rank} ---\n{tb}" for rank, tb in failures)
        what = f"still running after {timeout:.0f} s" if hung else "failed"
        raise AssertionError(f"distributed workers {what} (exit codes {[p.exitcode for p in procs]}):\n"
                             f"{detail}\n{hung}")


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
