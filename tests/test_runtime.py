"""The CPU runtime: every patch is needed, all of them together suffice, and none apply with CUDA."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distributed import lone_process_env

PROBE = Path(__file__).with_name("runtime_probe.py")
STAGES = ["seed", "ddp", "train", "checkpoint"]


def _run_probe(tmp_path, skip: str = ""):
    env = dict(lone_process_env(os.environ), FLM_CPU_RUNTIME_SKIP=skip, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(PROBE), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    passed = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")]
    return proc, passed


def test_all_patches_together_run_megatron_on_cpu(tmp_path):
    proc, passed = _run_probe(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert passed == STAGES
    assert (tmp_path / "ckpt" / "metadata.json").exists()


# Which stage first needs each patch, and the megatron-core call that fails without it.
@pytest.mark.parametrize("patch, failing_stage, evidence", [
    ("rng_tracker", "seed", "get_rng_state"),
    ("current_device", "ddp", "current_device"),
    ("cuda_tensors", "train", "Torch not compiled with CUDA enabled"),
    ("synchronize", "checkpoint", "synchronize"),
])
def test_each_patch_is_needed(tmp_path, patch, failing_stage, evidence):
    proc, passed = _run_probe(tmp_path, skip=patch)
    assert proc.returncode != 0, f"megatron-core ran without the {patch!r} patch: is it still needed?"
    assert passed == STAGES[: STAGES.index(failing_stage)], proc.stderr[-3000:]
    assert evidence in proc.stderr


def test_strict_no_op_when_cuda_is_available():
    code = (
        "import torch\n"
        "torch.cuda.is_available = lambda: True\n"
        "orig = (torch.cuda.current_device, torch.cuda.synchronize)\n"
        "from megatron.core.tensor_parallel import random as r\n"
        "tracker = r.CudaRNGStatesTracker\n"
        "from flm_ext.runtime import enable_cpu_runtime\n"
        "assert enable_cpu_runtime() == []\n"
        "assert (torch.cuda.current_device, torch.cuda.synchronize) == orig\n"
        "assert r.CudaRNGStatesTracker is tracker\n"
        "from torch.overrides import _get_current_function_mode_stack\n"
        "assert not _get_current_function_mode_stack()\n"
        "print('untouched')\n"
    )
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "untouched" in proc.stdout


def test_unknown_patch_name_is_refused():
    from flm_ext.runtime import enable_cpu_runtime

    with pytest.raises(ValueError, match="no_such_patch"):
        enable_cpu_runtime(skip=("no_such_patch",))
