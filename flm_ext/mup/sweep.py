"""Run orchestration for µP searches and width sweeps: each run is a `pretrain_flm.py` subprocess.

Every run has a folder under the output root: `spec.json` (its exact flags), `metrics.jsonl`
(full-precision losses from `--metrics-jsonl`), `stdout.log`, and, once the process has ended by
itself, the marker `done.json` (status ok / failed, exit code, losses by iteration). A rerun of
the same command skips runs with a marker, so an interrupted sweep resumes where it stopped;
a run interrupted midway starts over (or, with `checkpoint_interval`, continues from its last
checkpoint through pretrain_flm's own --save/--load). A folder whose spec.json holds different
flags is refused rather than silently mixed into the results. Up to `jobs` runs go in parallel,
each with `threads` intra-op threads; a progress line (runs done, steps/s, ETA) is printed
periodically.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from flm_ext.progress import format_duration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = os.path.join(REPO, "pretrain_flm.py")
MARKER = "done.json"


class SweepError(RuntimeError):
    """A run folder or flag set that cannot be used; the message names it."""


@dataclass
class RunSpec:
    name: str  # folder name under the root; unique within a command
    args: list[str]  # pretrain_flm.py flags (the orchestrator adds --metrics-jsonl and checkpoint flags)
    train_iters: int
    meta: dict = field(default_factory=dict)  # width, lr, ... (for tables; not part of the identity)


def read_metrics(path: str) -> dict[int, dict]:
    """{iteration: {key: value}} from a --metrics-jsonl file; later lines win (a resumed run
    re-logs the steps after its checkpoint). A truncated last line (killed writer) is ignored."""
    rows: dict[int, dict] = {}
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.setdefault(int(row["iteration"]), {}).update({k: v for k, v in row.items() if k != "iteration"})
    return rows


def loss_at(metrics: dict[int, dict], step: int, metric: str = "valid", window: int = 5) -> float | None:
    """The loss of a run at `step`: the validation loss logged there ("valid"), or the mean train
    loss over the last `window` logged steps up to it ("train")."""
    if metric == "valid":
        value = metrics.get(step, {}).get("valid/loss")
        return None if value is None else float(value)
    steps = sorted(s for s, row in metrics.items() if s <= step and "train/loss" in row)
    if not steps or steps[-1] != step:
        return None
    values = [metrics[s]["train/loss"] for s in steps[-window:]]
    return float(sum(values) / len(values))


class _Child:
    def __init__(self, spec: RunSpec, folder: str, proc: subprocess.Popen, log_file):
        self.spec, self.folder, self.proc, self.log_file = spec, folder, proc, log_file
        self.start = time.time()


class Orchestrator:
    """Runs `RunSpec`s under `root` (see the module docstring)."""

    def __init__(self, root: str, *, jobs: int = 1, threads: int | None = None, retry_failed: bool = False,
                 checkpoint_interval: int | None = None, progress_every: float = 15.0, log=print,
                 python: str = sys.executable, label: str = "runs"):
        if jobs < 1:
            raise SweepError(f"--jobs={jobs} must be >= 1")
        if threads is not None and threads < 1:
            raise SweepError(f"--threads={threads} must be >= 1")
        self.root, self.jobs, self.retry_failed = root, jobs, retry_failed
        self.threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        self.checkpoint_interval, self.progress_every, self.log = checkpoint_interval, progress_every, log
        self.python, self.label = python, label

    def folder(self, spec: RunSpec) -> str:
        return os.path.join(self.root, spec.name)

    def result(self, spec: RunSpec) -> dict | None:
        """The finished result of a run (None if it has not finished), after checking its flags."""
        folder = self.folder(spec)
        spec_path = os.path.join(folder, "spec.json")
        if os.path.exists(spec_path):
            with open(spec_path) as f:
                recorded = json.load(f)
            if recorded.get("args") != spec.args:
                raise SweepError(f"{folder} holds a run with different flags than this command asks for "
                                 f"(recorded in {spec_path}); use another --out, or delete that folder")
        marker = os.path.join(folder, MARKER)
        if not os.path.exists(marker):
            return None
        with open(marker) as f:
            done = json.load(f)
        if done.get("status") != "ok" and self.retry_failed:
            return None
        done["metrics"] = {int(k): v for k, v in done.get("metrics", {}).items()}
        return done

    def _launch(self, spec: RunSpec) -> _Child:
        folder = self.folder(spec)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "spec.json"), "w") as f:
            json.dump({"name": spec.name, "args": spec.args, "train_iters": spec.train_iters, "meta": spec.meta},
                      f, indent=1)
        for stale in (MARKER,):
            if os.path.exists(os.path.join(folder, stale)):
                os.remove(os.path.join(folder, stale))
        metrics = os.path.join(folder, "metrics.jsonl")
        extra = ["--metrics-jsonl", metrics]
        if "--data-cache-path" not in spec.args:  # parallel runs must not build one shared index cache at once
            extra += ["--data-cache-path", os.path.join(folder, "cache")]
        if self.checkpoint_interval:
            ckpt = os.path.join(folder, "ckpt")
            extra += ["--save", ckpt, "--load", ckpt, "--save-interval", str(self.checkpoint_interval),
                      "--keep-last", "1"]
        else:  # no checkpoint to resume from: an unfinished run starts over
            if os.path.exists(metrics):
                os.remove(metrics)
        from flm_ext.runtime import lone_process_env  # (torch: only once a run starts)

        # A lone pretrain_flm.py starts torch.distributed on an in-process store: parallel runs
        # then share no port, and none can be taken between probe and bind.
        env = lone_process_env(os.environ)
        env.update(OMP_NUM_THREADS=str(self.threads), PYTHONWARNINGS="ignore")
        log_file = open(os.path.join(folder, "stdout.log"), "a")
        proc = subprocess.Popen([self.python, PRETRAIN, *spec.args, *extra], stdout=log_file,
                                stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        return _Child(spec, folder, proc, log_file)

    def _finish(self, child: _Child) -> dict:
        child.log_file.close()
        metrics = read_metrics(os.path.join(child.folder, "metrics.jsonl"))
        rc = child.proc.returncode
        done = {"status": "ok" if rc == 0 else "failed", "returncode": rc, "wall_s": time.time() - child.start,
                "last_iteration": max(metrics) if metrics else 0, "metrics": metrics}
        if rc != 0:
            with open(os.path.join(child.folder, "stdout.log"), errors="replace") as f:
                done["error_tail"] = f.read()[-2000:]
        if rc != 0 and not metrics:
            # Failed before its first step (a busy port, a missing file, a kill from outside): no
            # result to keep, so no marker; the next invocation tries again.
            return done
        tmp = os.path.join(child.folder, MARKER + ".tmp")
        with open(tmp, "w") as f:
            json.dump(done, f)
        os.replace(tmp, os.path.join(child.folder, MARKER))
        if self.checkpoint_interval and rc == 0:
            shutil.rmtree(os.path.join(child.folder, "ckpt"), ignore_errors=True)
        return done

    def run(self, specs: list[RunSpec]) -> dict[str, dict]:
        """Run every spec that has not finished; returns {name: result} for all of them."""
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise SweepError(f"duplicate run names: {sorted(n for n in set(names) if names.count(n) > 1)}")
        results: dict[str, dict] = {}
        pending = []
        for spec in specs:
            done = self.result(spec)
            if done is None:
                pending.append(spec)
            else:
                results[spec.name] = done
        total_steps = sum(s.train_iters for s in pending)
        self.log(f"[{self.label}] {len(specs)} runs: {len(results)} already finished (skipped), {len(pending)} to run "
                 f"({total_steps:,} steps) with {self.jobs} parallel job(s) x {self.threads} thread(s) in {self.root}")
        if not pending:
            return results
        queue, running = list(pending), []
        finished_steps, start, last_report = 0, time.time(), time.time()

        def on_term(signum, frame):  # SIGTERM (e.g. a scheduler's kill) cleans up like Ctrl-C
            raise KeyboardInterrupt(f"signal {signum}")

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    running.append(self._launch(queue.pop(0)))
                time.sleep(0.5)
                for child in list(running):
                    if child.proc.poll() is None:
                        continue
                    running.remove(child)
                    done = self._finish(child)
                    results[child.spec.name] = done
                    finished_steps += child.spec.train_iters
                    status = "ok" if done["status"] == "ok" else f"FAILED (exit {done['returncode']})"
                    self.log(f"[{self.label}] {child.spec.name}: {status} in {format_duration(done['wall_s'])} "
                             f"({len(results)}/{len(specs)} finished)")
                if time.time() - last_report >= self.progress_every and running:
                    last_report = time.time()
                    current = {c.spec.name: max(read_metrics(os.path.join(c.folder, "metrics.jsonl")) or [0])
                               for c in running}
                    done_steps = finished_steps + sum(current.values())
                    rate = done_steps / (time.time() - start)
                    eta = (total_steps - done_steps) / rate if rate > 0 else math.inf
                    now = ", ".join(f"{n} step {s}/{next(c.spec.train_iters for c in running if c.spec.name == n)}"
                                    for n, s in current.items())
                    self.log(f"[{self.label}] {len(results)}/{len(specs)} finished | running: {now} | "
                             f"{rate:.2f} steps/s | ETA {format_duration(eta)}")
        except BaseException:
            for child in running:  # leave no orphans; their folders have no marker and rerun next time
                try:
                    os.killpg(child.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for child in running:
                try:
                    child.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.log_file.close()
            self.log(f"[{self.label}] interrupted: {len(running)} unfinished run(s) will be rerun next time")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        return results
