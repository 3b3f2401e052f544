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
