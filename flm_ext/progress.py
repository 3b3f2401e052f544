"""Progress lines for long-running tools: done/total, rate, elapsed and ETA, at most every
`interval` seconds and once at the end. One implementation for growth, export, preprocessing,
sweeps and evaluation; lines (not a redrawn bar) so that logs of cluster jobs stay readable.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable


def format_duration(seconds: float) -> str:
    """'1h02m', '3m05s' or '?' for an unknown duration."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Progress:
    """`label: 12/40 items (30%) | 3.1 MiB/s | elapsed 0m12s | ETA 0m28s | detail`.

    `total` counts `unit`s (items, bytes, tokens...); with `unit="B"` amounts print as GiB and
    rates as MiB/s. `update(n, detail)` adds n done units and prints when `interval` has passed.
    """

    def __init__(self, total: float, label: str, *, unit: str = "items", interval: float = 5.0,
                 emit: Callable[[str], None] = _stderr):
        self.total, self.label, self.unit, self.interval, self.emit = total, label, unit, interval, emit
        self.done = 0.0
        self.start = self.last = time.time()

    def _amount(self, n: float) -> str:
        return f"{n / 2 ** 30:.2f}" if self.unit == "B" else f"{n:,.0f}"

    def line(self, detail: str = "") -> str:
        elapsed = max(time.time() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        unit = "GiB" if self.unit == "B" else self.unit
        speed = f"{rate / 2 ** 20:.1f} MiB/s" if self.unit == "B" else f"{rate:,.1f} {self.unit}/s"
        text = (f"{self.label}: {self._amount(self.done)}/{self._amount(self.total)} {unit}{pct} | {speed} | "
                f"elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}")
        return text + (f" | {detail}" if detail else "")

    def update(self, n: float = 1, detail: str = "") -> None:
        self.done += n
        now = time.time()
        if now - self.last >= self.interval or self.done >= self.total:
            self.last = now
            self.emit(self.line(detail))

    @property
    def elapsed(self) -> float:
        return time.time() - self.start
