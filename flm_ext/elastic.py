"""torchrun whose clean stop exits 0 (`tools/torchrun.py`; the launchers in examples/ run it).

Why: torch's elastic agent turns a SIGTERM or SIGINT into an exception: it forwards the signal to the
workers, waits for them (they finish their step and save, then exit 0) and then re-raises, so
torchrun exits 1 although the save succeeded, and SLURM records a time-limit stop or an `scancel`
as FAILED (a second signal or SLURM's KillWait then shows as 137). Here the first SIGTERM / SIGINT is
passed to the workers and the agent keeps watching them as in normal running: when every worker
exits 0 after its save, torchrun exits 0. A second signal, a worker that fails while stopping, or
TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds without an exit fall back to torch's own handling (stop the
workers, exit non-zero), and no in-job restart starts once a stop was asked for.

The one patch is the module attribute `_terminate_process_handler` of
torch.distributed.elastic.multiprocessing.api (looked up when the agent installs its handlers) and
the agent's `_restart_workers`; everything else is torch.distributed.run unchanged.
"""
from __future__ import annotations

import os
import signal
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _CleanStop:
    def __init__(self, grace_s: int):
        self.grace_s = grace_s
        self.signal = None

    def handle(self, signum, frame) -> None:
        from torch.distributed.elastic.multiprocessing.api import SignalException

        if signum not in STOP_SIGNALS or self.signal is not None:  # SIGHUP / SIGQUIT, or asked twice
            raise SignalException(f"Process {os.getpid()} got signal: {signum}", sigval=signal.Signals(signum))
        self.signal = signum
        print(f"torchrun: {signal.Signals(signum).name}: the workers finish their step, save and exit "
              f"(a second signal, or {self.grace_s} s, stops them)", file=sys.stderr, flush=True)
        self._forward(signum)
        if self.grace_s > 0:
            signal.signal(signal.SIGALRM, self._grace_over)
            signal.alarm(self.grace_s)

    @staticmethod
    def _forward(signum) -> None:
        """Workers run in their own sessions: a terminal's Ctrl-C or a `kill` of torchrun does not reach them."""
        import psutil

        for child in psutil.Process().children():
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass

    def _grace_over(self, signum, frame) -> None:
        from torch.distributed.elastic.multiprocessing.api import SignalException

        raise SignalException(f"workers still running {self.grace_s} s after the stop signal",
                              sigval=signal.SIGKILL)


def install(grace_s: int) -> _CleanStop:
    """Patch torch's elastic agent for the clean stop (see the module docstring)."""
    from torch.distributed.elastic.agent.server import api as agent_api
    from torch.distributed.elastic.multiprocessing import api as mp_api
    from torch.distributed.elastic.multiprocessing.api import SignalException

    stop = _CleanStop(grace_s)
    mp_api._terminate_process_handler = stop.handle
    restart = agent_api.SimpleElasticAgent._restart_workers

    def restart_unless_stopping(agent, worker_group):
        if stop.signal is not None:  # a worker failed while the others save: stop, do not restart
            raise SignalException("a worker failed while stopping", sigval=signal.Signals(stop.signal))
        return restart(agent, worker_group)

    agent_api.SimpleElasticAgent._restart_workers = restart_unless_stopping
    return stop


def main(argv=None) -> int:
    from torch.distributed import run as torchrun

    install(int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "30")))
    torchrun.main(argv)  # raises (exit 1, torch's error report) when a worker failed
    return 0
