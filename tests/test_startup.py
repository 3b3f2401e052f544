"""Process start-up: an entry point's prelude (flm_ext.quiet_megatron_import_warnings) keeps megatron-core's
import from importing TorchDynamo and Inductor, and the deferred torch.compile still compiles each
function, once, at its first call."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import torch

calls = []
def recording_compile(model=None, **kwargs):  # stands in for the real torch.compile: no compiler needed
    calls.append((getattr(model, "__name__", None), sorted(kwargs)))
    return (lambda *a, **k: ("compiled", model(*a, **k))) if model is not None else (lambda fn: fn)
torch.compile = recording_compile

from flm_ext import quiet_megatron_import_warnings
quiet_megatron_import_warnings()
quiet_megatron_import_warnings()  # a second entry-point call changes nothing
import megatron.core  # noqa: F401
from megatron.core.fusions.fused_bias_gelu import bias_gelu

at_import = list(calls)
def double(x):
    return 2 * x
deferred = torch.compile(double)
before_call = list(calls)
first, second = deferred(3), deferred(4)
torch.compile(double, fullgraph=True)  # with arguments: straight to torch.compile
print(json.dumps({"dynamo": "torch._dynamo" in sys.modules, "inductor": "torch._inductor" in sys.modules,
                  "at_import": at_import, "before_call": before_call, "calls": calls,
                  "results": [first, second], "name": deferred.__name__,
                  "fusion_is_megatrons": bias_gelu.__wrapped__.__module__}))
"""


def test_megatron_imports_without_dynamo_and_compile_happens_at_the_first_call():
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert not got["dynamo"] and not got["inductor"], got
    assert got["at_import"] == [] and got["before_call"] == []  # megatron's fusions: decorated, not compiled
    assert got["calls"] == [["double", []], ["double", ["fullgraph"]]]  # compiled once, at the first call
    assert got["results"] == [["compiled", 6], ["compiled", 8]] and got["name"] == "double"
    assert got["fusion_is_megatrons"] == "megatron.core.fusions.fused_bias_gelu"


def test_the_growth_tool_reads_its_input_ahead_before_torch_is_imported(tmp_path):
    """tools/grow_checkpoint.py resolves --load's iteration folder and starts reading its shards
    before it imports torch (flm_ext.checkpoint.layout needs no torch; the package resolves its
    names lazily), so the disk works while the interpreter imports."""
    from flm_ext.config import get_preset
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    src = tmp_path / "src"
    write_synthetic_checkpoint(str(src), get_preset("tiny-stage1", num_layers=2, vocab_size=512), iteration=3)
    probe = f"""
import runpy, sys, threading
import flm_ext.fileio as fileio
seen = {{}}
real = fileio.read_ahead
def recording(paths, limit=None):
    seen["torch_loaded"] = "torch" in sys.modules
    seen["paths"] = paths
    stop = real(paths, limit)
    stop.set()
    return stop
fileio.read_ahead = recording
sys.argv = ["grow_checkpoint.py", "--load={src}", "--help"]
try:
    runpy.run_path({str(REPO / "tools" / "grow_checkpoint.py")!r}, run_name="__main__")
except SystemExit:
    pass
print("PROBE", seen["torch_loaded"], sorted(p.rsplit("/", 1)[1] for p in seen["paths"]))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("PROBE"))
    shards = sorted(p.name for p in (src / "iter_0000003").iterdir() if p.suffix == ".distcp")
    assert shards and line == f"PROBE False {shards}", proc.stdout[-2000:] + proc.stderr[-2000:]


def test_read_ahead_reads_up_to_its_limit_and_skips_what_it_cannot_open(tmp_path, monkeypatch):
    import threading
    import time

    from flm_ext import fileio

    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(bytes(3 * 2 ** 20))
    opened = []
    real_open = open

    def recording_open(path, *args, **kwargs):
        opened.append(os.path.basename(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(fileio, "open", recording_open, raising=False)  # the module's name for the builtin
    stop = fileio.read_ahead([str(tmp_path / "missing"), *map(str, files)], limit=4 * 2 ** 20)
    deadline = time.time() + 60
    while any(t.name == "flm-read-ahead" for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.01)
    assert isinstance(stop, threading.Event)
    assert opened == ["missing", "f0", "f1"]  # 4 MiB: all of f0 and part of f1; f2 is never opened
