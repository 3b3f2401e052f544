"""benchmarks/gpu_step.py end to end at a tiny shape on CPU: every variant runs, the JSON is complete."""
import json
import math
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def counted_training_flops(shape: dict) -> tuple[int, int, int]:
    """Build the FLM model of `shape` on the CPU, run one micro-batch forward + backward under
    torch's FLOP counter (SDPA on its math kernel, whose matmuls the counter sees) and return
    (counted matmul FLOPs, parameters, parameters in vectors: biases and LayerNorms)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from flm_ext.config import FLMConfig
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.training.engine import forward_step

    cfg = FLMConfig(num_layers=shape["layers"], hidden_size=shape["hidden"], num_attention_heads=shape["heads"],
                    ffn_hidden_size=shape["ffn"], seq_length=shape["seq"], vocab_size=shape["vocab"])
    [model] = build_model_chunks(cfg)
    b, s = shape["micro_batch"], shape["seq"]
    ids = torch.randint(0, shape["vocab"], (b, s + 1), generator=torch.Generator().manual_seed(0))
    batch = {"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": torch.ones(b, s),
             "position_ids": torch.arange(s).expand(b, s)}
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        output, _ = forward_step(iter([batch]), model)
        output.float().sum().backward()
    params = list({id(p): p for p in model.parameters()}.values())  # the tied embedding once
    return (counter.get_total_flops(), sum(p.numel() for p in params),
            sum(p.numel() for p in params if p.dim() < 2))


def test_gpu_step_benchmark_tiny_cpu(tmp_path, megatron_single_process):
    out = tmp_path / "gpu_step.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_step.py"), "--tiny", "--steps", "2",
                           "--rounds", "1", "--json", str(out)], capture_output=True, text=True, timeout=300,
                          env={**{k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")},
                               "CUDA_VISIBLE_DEVICES": ""})  # a lone process: no TCP rendezvous, no port clash
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"flm-xpos-ref", "flm-xpos", "flm-rope", "peer"}
    shape = report["shape"]
    # The parameter count by hand: per layer QKV, projection, FC1, FC2 with biases and two
    # LayerNorms; the final LayerNorm; the tied embedding once.
    h, f, v, layers = shape["hidden"], shape["ffn"], shape["vocab"], shape["layers"]
    n = layers * (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h) + 2 * h + v * h
    assert report["flm_params"] == n
    # The FLOPs per step against what one forward + backward of the model actually executes: the
    # counter sees every matmul (2 m n k each, backward twice the forward), i.e. 6 x tokens x the
    # matrix parameters plus the attention products; the convention's 6 N also charges the biases
    # and LayerNorm parameters, which run no matmul, so exactly those 6 x tokens x vectors differ.
    counted, params, vectors = counted_training_flops(shape)
    assert params == n
    tokens = shape["micro_batch"] * shape["seq"]
    assert report["flops_per_step"] == counted + 6 * tokens * vectors, (report["flops_per_step"], counted)
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
