"""Hangs named in minutes: a watchdog thread on every rank (`--hang-timeout-minutes`).

A hung collective is silent until the process group times out (`--distributed-timeout-minutes`,
30 by default), and then names nobody. Here every rank's watchdog thread publishes a heartbeat
(a counter, its last finished step and what it is doing) in the run's rendezvous store (torchrun's
TCPStore; the collectives are not needed for it, so it works while one of them hangs). When a
rank has finished no step for the hang timeout, its watchdog reads every rank's heartbeat and
prints which ranks are late: those whose heartbeat has stopped (SIGSTOPped, dead, or stuck in C
code holding the GIL) and those still behind at an older step; then it dumps this rank's Python
stacks (faulthandler) and exits with HANG_EXIT_CODE so the launcher's recovery takes over.
The counter, not a wall-clock time, tells a live rank from a stopped one: nodes' clocks differ.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time

import torch.distributed as dist

HANG_EXIT_CODE = 3
_KEY = "flm_watchdog/{rank}"


class Watchdog:
    """Start with `start()`; call `progress(iteration)` after every finished step; `paused()` around
    work that may rightly take longer than the timeout (a synchronous save); `stop()` at the end.

    `paused_limit_s`: how long a paused phase may last before it too is named as a hang (None: no
    limit). A save stuck in a collective or on the file system is otherwise silent until the
    process group times out, and then names nobody."""

    def __init__(self, timeout_s: float, *, paused_limit_s: float | None = None, store=None, rank: int | None = None,
                 world_size: int | None = None, poll_s: float | None = None, exit=os._exit, out=None):
        self.timeout_s = timeout_s
        self.paused_limit_s = paused_limit_s
        self.poll_s = poll_s or min(30.0, max(0.2, timeout_s / 10))
        self.stale_s = 3 * self.poll_s  # a heartbeat unchanged this long: the rank does not respond
        self.store = store if store is not None else dist.distributed_c10d._get_default_store()
        self.rank = dist.get_rank() if rank is None else rank
        self.world = dist.get_world_size() if world_size is None else world_size
        self.exit, self.out = exit, out or sys.stderr
        self.step, self.phase, self.beat = 0, "starting", 0
        self.last_progress = time.monotonic()
        self._paused = 0
        self._seen: dict[int, tuple[str, float]] = {}  # rank -> (heartbeat text, when it last changed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flm-watchdog", daemon=True)

    def start(self, iteration: int = 0) -> "Watchdog":
        self.progress(iteration)
        self._publish()  # at once: a rank stopped before the thread's first beat is still seen as silent
        self._thread.start()
        return self

    def progress(self, iteration: int, phase: str = "training") -> None:
        self.step, self.phase, self.last_progress = iteration, phase, time.monotonic()

    @contextlib.contextmanager
    def paused(self, phase: str):
        self._paused += 1
        self.phase = phase
        try:
            yield
        finally:
            self._paused -= 1
            self.progress(self.step)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self.poll_s)

    # --- the thread ----------------------------------------------------------------------------------
    def _publish(self) -> None:
        self.beat += 1
        self.store.set(_KEY.format(rank=self.rank), f"{self.beat} {self.step} {self.phase}")

    def _read_all(self) -> dict[int, tuple[str, float]]:
        now = time.monotonic()
        for r in range(self.world):
            key = _KEY.format(rank=r)
            if not self.store.check([key]):
                continue
            text = self.store.get(key).decode()
            if r not in self._seen or self._seen[r][0] != text:
                self._seen[r] = (text, now)
        return self._seen

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._publish()
                self._read_all()
            except Exception:  # noqa: BLE001 - the store went away (the run is ending): nothing to watch
                return
            if time.monotonic() - self.last_progress > self._limit():
                self._fire()
                return

    def _limit(self) -> float:
        if not self._paused:
            return self.timeout_s
        return float("inf") if self.paused_limit_s is None else self.paused_limit_s

    def report(self) -> str:
        """Which ranks are late, from the heartbeats seen so far."""
        now = time.monotonic()
        silent, behind, waiting, unknown = [], [], [], []
        steps = {}
        for r in range(self.world):
            if r not in self._seen:
                unknown.append(r)
                continue
            text, changed = self._seen[r]
            _, step, phase = text.split(" ", 2)
            steps[r] = int(step)
            if now - changed > self.stale_s:
                silent.append(f"{r} (silent for {now - changed:.0f} s, last finished step {step}, was {phase})")
        newest = max(steps.values(), default=0)
        for r, step in steps.items():
            if any(s.startswith(f"{r} ") for s in silent):
                continue
            (behind if step < newest else waiting).append(f"{r} (step {step})" if step < newest else str(r))
        parts = []
        if silent:
            parts.append(f"not responding: rank {', rank '.join(silent)} - stopped, dead, or stuck holding the GIL")
        if behind:
            parts.append(f"behind at an older step: rank {', rank '.join(behind)}")
        if unknown:
            parts.append(f"never reported: rank {', '.join(map(str, unknown))}")
        if not parts:
            parts.append("every rank still responds at the same step: a collective, the data loader or the "
                         "file system is stuck on all of them; compare the stacks")
        if waiting:
            parts.append(f"waiting for them: rank {', '.join(waiting)}")
        return "; ".join(parts)

    def _fire(self) -> None:
        waited = time.monotonic() - self.last_progress
        self._read_all()
        limit = (f"hang timeout {self.timeout_s:.0f} s, --hang-timeout-minutes" if not self._paused else
                 f"{self.phase} for longer than its limit of {self.paused_limit_s:.0f} s")
        print(f"watchdog (rank {self.rank}): no finished step for {waited:.0f} s ({limit}) after step "
              f"{self.step}. Late ranks: "
              f"{self.report()}. Python stacks of rank {self.rank} follow; exiting with code {HANG_EXIT_CODE} "
              f"so the launcher's recovery takes over.", file=self.out, flush=True)
        try:
            faulthandler.dump_traceback(file=self.out, all_threads=True)
        except (AttributeError, ValueError, OSError):  # an `out` without a file descriptor
            import traceback

            for thread_id, frame in sys._current_frames().items():
                print(f"Thread {thread_id:#x}:\n{''.join(traceback.format_stack(frame))}", file=self.out)
        self.out.flush()
        self.exit(HANG_EXIT_CODE)
