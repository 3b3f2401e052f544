"""Helpers for the launcher and flag tests: what a launch script would run, and pretrain_flm.main
called in this process (no interpreter start, no megatron re-import: milliseconds, not seconds)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pretrain_main():
    return _load("pretrain_flm", REPO / "pretrain_flm.py").main


def load_tool(name: str):
    """tools/<name>.py as a module (its main() runs in this process)."""
    return _load(name, REPO / "tools" / f"{name}.py")


def recorded_calls(tmp_path: Path, script: str, *args: str, **env: str) -> list[tuple[str, list[str]]]:
    """Every call a launcher makes to its interpreter, recorded by a stand-in interpreter ($PYTHON):
    (TORCH_ELASTIC_SHUTDOWN_TIMEOUT as the call saw it, argv)."""
    record = tmp_path / "calls"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/bin/sh\n{{ printf "%s\\0" "$TORCH_ELASTIC_SHUTDOWN_TIMEOUT" "$@"; echo; }} >> "{record}"\n')
    fake.chmod(0o755)
    record.unlink(missing_ok=True)
    proc = subprocess.run(["bash", str(REPO / "examples" / script), *args], capture_output=True, text=True,
                          env=dict(ENV, **env, PYTHON=str(fake)), timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split("\0")[:-1] for line in record.read_text().splitlines()]
    return [(call[0], call[1:]) for call in calls]


def recorded_launch(tmp_path: Path, script: str, *args: str, **env: str) -> list[str]:
    """The argv of the launcher's last call to its interpreter (the one it execs)."""
    return recorded_calls(tmp_path, script, *args, **env)[-1][1]


def run_launcher(script: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """A launcher run for real with this interpreter and a PATH without any python of our own."""
    env = dict(ENV, **env, PYTHON=sys.executable, PATH="/usr/bin:/bin")
    return subprocess.run(["bash", str(REPO / "examples" / script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
