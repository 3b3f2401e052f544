"""benchmarks/gpu_step.py end to end at a tiny shape on CPU: every variant runs, the JSON is complete."""
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_step_benchmark_tiny_cpu(tmp_path):
    out = tmp_path / "gpu_step.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_step.py"), "--tiny", "--steps", "2",
                           "--rounds", "1", "--json", str(out)], capture_output=True, text=True, timeout=300,
                          env={**{k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")},
                               "CUDA_VISIBLE_DEVICES": ""})  # a lone process: no TCP rendezvous, no port clash
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"flm-xpos-ref", "flm-xpos", "flm-rope", "peer"}
    shape = report["shape"]
    # FLOPs per step = tokens x (6 N + 12 L h s), N the FLM parameter count (tied embedding once).
    h, f, v, layers = shape["hidden"], shape["ffn"], shape["vocab"], shape["layers"]
    n = layers * (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h) + 2 * h + v * h
    assert report["flm_params"] == n
    tokens = shape["micro_batch"] * shape["seq"]
    assert report["flops_per_step"] == tokens * (6 * n + 12 * layers * h * shape["seq"])
    assert report["matmul_tflops"] > 0
    for name, e in report["variants"].items():
        assert "error" not in e, (name, e.get("error"))
        assert e["params"] == n, name  # the peer has exactly the FLM shape
        assert len(e["rounds_ms"]) == 1 and len(e["rounds_ms"][0]) == 2 and e["step_ms"] > 0
        assert math.isclose(e["tflops"], e["flops_per_step"] / (e["step_ms"] * 1e-3) / 1e12, rel_tol=1e-9)
        assert math.isclose(e["mfu_datasheet"], e["tflops"] / 989.0, rel_tol=1e-9)
        assert math.isfinite(e["first_loss"]) and abs(e["first_loss"] - math.log(v)) < 1.0  # ~uniform at init
    ref, fast = report["variants"]["flm-xpos-ref"]["settings"], report["variants"]["flm-xpos"]["settings"]
    assert ref["env"]["FLM_XPOS_IMPL"] == "reference" and fast["distributed_optimizer"]
    assert report["variants"]["flm-rope"]["settings"]["position"] == "rope"
    assert "| flm-xpos |" in proc.stdout and "| peer |" in proc.stdout
