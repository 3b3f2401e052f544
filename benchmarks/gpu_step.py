"""GPU speed of the FLM training step, side by side with a plain PyTorch peer, in one run.

    python benchmarks/gpu_step.py --json out.json            # on one H100/H200 (benchmarks/gpu_step.sh)
    python benchmarks/gpu_step.py --tiny --json out.json     # CPU smoke run (tests/test_gpu_step.py)

Default shape (FLM-like 1.41B): 24 layers x 2048, 16 heads, FFN 8192, vocab 100,352,
seq 2048, micro-batch 4, bf16 weights with fp32 main weights. Every variant times whole training
steps: forward, backward and the optimizer step. Variants:

  flm-xpos-ref   the FLM model through the project's own code (build_model_chunks, wrap_ddp,
                 build_optimizer with the distributed optimizer, engine.train_step) on the
                 reference path: unfused xPos, no megatron fusions, torch's foreach AdamW
  flm-xpos       the same with the fast paths of flm_ext/model/fused.py: Triton xPos on q and k
                 (one pass, written in SDPA's layout), megatron's bias+GeLU / bias+dropout+add /
                 cross-entropy fusions, SDPA kernel order FLM_SDPA_BACKENDS, fused AdamW
  flm-rope       flm-xpos with rope instead of xPos (the xPos cost is flm-xpos vs flm-rope)
  peer           a plain PyTorch model of the same shape (nanoGPT style: fused QKV, SDPA, rope,
                 pre-LN, biases, GeLU(tanh), tied embeddings), each block torch.compile'd, bf16
                 weights with fp32 main weights and torch's fused AdamW (the same arithmetic)

FLOPs per step = tokens x (6 N + 12 L h s) (N counts the tied embedding once). MFU is given
against the datasheet peak (--peak-tflops, 989 dense bf16 for H100/H200 SXM) and against a
large bf16 matmul this run measures. Timing: warm-up
steps first (compilation, autotuning, allocator), CUDA events around each step, the median of
--steps steps, taken in two rounds that cycle through the variants so that drift shows as a
spread between rounds. Peak memory is torch.cuda.max_memory_allocated per variant. Each step is
also split at the start of the optimizer step (an event recorded there), giving forward +
backward alone (what the issue's reference numbers measured) and the optimizer's share.
On CPU (`--tiny`) the same code runs in fp32 with wall-clock timing; its numbers only show
that the script works.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flm_ext import quiet_megatron_import_warnings  # noqa: E402

quiet_megatron_import_warnings()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

VARIANTS = ("flm-xpos-ref", "flm-xpos", "flm-rope", "peer")
SHAPES = {
    "flm-1.4b": dict(layers=24, hidden=2048, heads=16, ffn=8192, vocab=100_352, seq=2048, micro_batch=4),
    "tiny": dict(layers=2, hidden=64, heads=4, ffn=256, vocab=512, seq=64, micro_batch=2),
}
ON_GPU = torch.cuda.is_available()


def step_flops(shape: dict, params: int) -> float:
    tokens = shape["micro_batch"] * shape["seq"]
    return tokens * (6 * params + 12 * shape["layers"] * shape["hidden"] * shape["seq"])


# --- timing -----------------------------------------------------------------------------------------
def sync():
    if ON_GPU:
        torch.cuda.synchronize()


def time_calls(fn, n: int) -> list[float]:
    """Milliseconds of each of n calls: CUDA events on GPU, a synchronised wall clock on CPU."""
    times = []
    for _ in range(n):
        if ON_GPU:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


class Marker:
    """Records the time of one point inside a step (the end of forward + backward) for `time_calls`."""

    def __init__(self):
        self.event = None

    def mark(self):
        if ON_GPU:
            self.event = torch.cuda.Event(enable_timing=True)
            self.event.record()
        else:
            self.event = time.perf_counter()


def time_steps(runner, n: int) -> tuple[list[float], list[float]]:
    """(whole step ms, forward + backward ms) for n steps; the runner marks the end of its backward."""
    whole, fwd_bwd = [], []
    for _ in range(n):
        if ON_GPU:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            runner.step()
            end.record()
            end.synchronize()
            whole.append(start.elapsed_time(end))
            fwd_bwd.append(start.elapsed_time(runner.marker.event))
        else:
            t0 = time.perf_counter()
            runner.step()
            whole.append((time.perf_counter() - t0) * 1e3)
            fwd_bwd.append((runner.marker.event - t0) * 1e3)
    return whole, fwd_bwd


def matmul_tflops(size: int, dtype: torch.dtype, device) -> float:
    """Median TFLOP/s of a size^3 matmul on random data (the measured ceiling for MFU)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = [torch.randn(size, size, device=device, dtype=dtype, generator=gen) for _ in range(3)]
    b = [torch.randn(size, size, device=device, dtype=dtype, generator=gen) for _ in range(3)]
    i = [0]

    def one():
        torch.mm(a[i[0] % 3], b[i[0] % 3])  # rotate inputs: no timing of a cached operand
        i[0] += 1

    time_calls(one, 5)
    ms = statistics.median(time_calls(one, 20))
    return 2 * size**3 / (ms * 1e-3) / 1e12


# --- batches ----------------------------------------------------------------------------------------
def batches(shape: dict, device, count: int = 4):
    gen = torch.Generator().manual_seed(1234)
    b, s, v = shape["micro_batch"], shape["seq"], shape["vocab"]
    out = []
    for _ in range(count):
        tokens = torch.randint(0, v - 128, (b, s + 1), generator=gen)  # real vocab, not the padding
        out.append({"tokens": tokens[:, :-1].to(device), "labels": tokens[:, 1:].to(device),
                    "loss_mask": torch.ones(b, s, device=device),
                    "position_ids": torch.arange(s, device=device).expand(b, s).contiguous()})
    return out


class Cycle:
    def __init__(self, items):
        self.items, self.i = items, 0

    def __iter__(self):
        return self

    def __next__(self):
        item = self.items[self.i % len(self.items)]
        self.i += 1
        return item


# --- the FLM model through the project's code -------------------------------------------------------
@contextlib.contextmanager
def env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _MarkBeforeOptimizer:
    """The optimizer as engine.train_step sees it; marks the time when its step begins (prepare_grads)."""

    def __init__(self, optimizer, marker: Marker):
        self._optimizer, self._marker = optimizer, marker

    def prepare_grads(self):
        self._marker.mark()
        return self._optimizer.prepare_grads()

    def __getattr__(self, name):
        return getattr(self._optimizer, name)


class FLMRunner:
    """build_model_chunks + wrap_ddp + build_optimizer(distributed) + engine.train_step, as the trainer does."""

    def __init__(self, shape: dict, args, *, position: str, fast: bool):
        from flm_ext.config import FLMConfig, num_parameters
        from flm_ext.model import fused
        from flm_ext.model.flm_model import build_model_chunks
        from flm_ext.training.engine import build_optimizer, wrap_ddp
        from flm_ext.training.optim import OptimConfig

        self.shape, self.fast = shape, fast
        self.env = dict(FLM_XPOS_IMPL=args.xpos_impl if fast else "reference",
                        FLM_SDPA_BACKENDS=args.sdpa_backends if fast else None)
        self.cfg = FLMConfig(num_layers=shape["layers"], hidden_size=shape["hidden"],
                             num_attention_heads=shape["heads"], ffn_hidden_size=shape["ffn"],
                             seq_length=shape["seq"], vocab_size=shape["vocab"], position_embedding=position)
        dtype = torch.bfloat16 if ON_GPU else torch.float32
        chunks = build_model_chunks(self.cfg, params_dtype=dtype, gpu_fusions=fast and ON_GPU)
        self.chunks = wrap_ddp(chunks, use_distributed_optimizer=True)
        self.optimizer = build_optimizer(self.chunks, self.cfg, OptimConfig(lr=1e-4, use_distributed_optimizer=True))
        self.fused_adam_groups = fused.use_fused_adam(self.optimizer) if fast and ON_GPU else 0
        self.params = num_parameters(self.cfg)
        self.data = Cycle(batches(shape, torch.device("cuda") if ON_GPU else torch.device("cpu")))
        self.losses = []
        self.marker = Marker()
        self.step_optimizer = _MarkBeforeOptimizer(self.optimizer, self.marker)

    def settings(self) -> dict:
        tc = self.chunks[0].config
        return {"position": self.cfg.position_embedding, "env": {k: v for k, v in self.env.items() if v},
                "bias_activation_fusion": tc.bias_activation_fusion, "bias_dropout_fusion": tc.bias_dropout_fusion,
                "cross_entropy_loss_fusion": tc.cross_entropy_loss_fusion,
                "fused_adam_param_groups": self.fused_adam_groups, "distributed_optimizer": True,
                "params_dtype": str(tc.params_dtype)}

    def step(self):
        from flm_ext.training.engine import train_step

        with env(**self.env):
            result = train_step(self.chunks, self.step_optimizer, self.data, num_microbatches=1,
                                seq_length=self.shape["seq"], micro_batch_size=self.shape["micro_batch"])
        self.losses.append(result.loss)


# --- the plain PyTorch peer ---------------------------------------------------------------------------
class PeerBlock(nn.Module):
    """nanoGPT's block at FLM's shape: pre-LN, fused QKV with bias, rope, SDPA, GeLU(tanh) MLP."""

    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(hidden, eps=1e-5), nn.LayerNorm(hidden, eps=1e-5)
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)

    def forward(self, x, cos, sin):
        b, s, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, h // self.heads).unbind(2)

        def rope(t):  # rotate-half rope, [b, s, heads, d]
            t1, t2 = t.chunk(2, dim=-1)
            return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], dim=-1).to(t.dtype)

        q, k, v = rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, s, h))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class PeerModel(nn.Module):
    def __init__(self, shape):
        super().__init__()
        h, self.heads = shape["hidden"], shape["heads"]
        self.embed = nn.Embedding(shape["vocab"], h)
        self.blocks = nn.ModuleList(PeerBlock(h, shape["heads"], shape["ffn"]) for _ in range(shape["layers"]))
        self.ln_f = nn.LayerNorm(h, eps=1e-5)
        d = h // shape["heads"]
        inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = torch.outer(torch.arange(shape["seq"], dtype=torch.float64), inv)
        self.register_buffer("cos", ang.cos()[None, :, None, :].float(), persistent=False)
        self.register_buffer("sin", ang.sin()[None, :, None, :].float(), persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens, labels):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        logits = F.linear(self.ln_f(x), self.embed.weight)  # tied
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))


class PeerRunner:
    """bf16 weights, fp32 main weights and grads, torch's fused AdamW on the main weights."""

    def __init__(self, shape: dict, args):
        device = torch.device("cuda") if ON_GPU else torch.device("cpu")
        dtype = torch.bfloat16 if ON_GPU else torch.float32
        self.shape = shape
        self.model = PeerModel(shape).to(device=device, dtype=dtype)
        self.compile = args.compile
        if self.compile != "none":
            for block in self.model.blocks:
                block.compile(backend=self.compile)
        self.params = [p for p in self.model.parameters()]
        self.main = [p.detach().float().clone().requires_grad_() for p in self.params]
        decay = [m for m, p in zip(self.main, self.params) if p.dim() == 2]
        no_decay = [m for m, p in zip(self.main, self.params) if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=1e-4, betas=(0.9, 0.95), fused=True)
        self.n_params = sum(p.numel() for p in self.params)
        self.data = Cycle(batches(shape, device))
        self.losses = []
        self.marker = Marker()

    def settings(self) -> dict:
        return {"position": "rope", "compile": self.compile, "params_dtype": str(self.params[0].dtype),
                "optimizer": "torch AdamW fused, fp32 main weights", "grad_clip": 1.0}

    def step(self):
        batch = next(self.data)
        for p in self.params:
            p.grad = None
        loss = self.model(batch["tokens"], batch["labels"])
        loss.backward()
        self.losses.append(loss.item())  # the FLM step syncs on its loss at this point too
        self.marker.mark()
        for m, p in zip(self.main, self.params):
            m.grad = p.grad.float()
        torch.nn.utils.clip_grad_norm_(self.main, 1.0, foreach=True)
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.main)


# --- driver -----------------------------------------------------------------------------------------
def build(name: str, shape: dict, args):
    if name == "flm-xpos-ref":
        return FLMRunner(shape, args, position="xpos", fast=False)
    if name == "flm-xpos":
        return FLMRunner(shape, args, position="xpos", fast=True)
    if name == "flm-rope":
        return FLMRunner(shape, args, position="rope", fast=True)
    if name == "peer":
        return PeerRunner(shape, args)
    raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")


def peak_memory_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if ON_GPU else None


def run_variant(name, shape, args, results):
    """Build, warm up and time one variant (one round), then free it; errors are recorded, not fatal."""
    entry = results.setdefault(name, {"rounds_ms": []})
    try:
        if ON_GPU:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        runner = build(name, shape, args)
        params = runner.params if isinstance(runner, FLMRunner) else runner.n_params
        for _ in range(args.warmup):
            runner.step()
        sync()
        times, fwd_bwd = time_steps(runner, args.steps)
        entry.setdefault("fwd_bwd_rounds_ms", []).append(fwd_bwd)
        entry.update(params=params, settings=runner.settings(), peak_memory_gib=peak_memory_gib(),
                     first_loss=runner.losses[0], last_loss=runner.losses[-1])
        entry["rounds_ms"].append(times)
    except Exception as exc:  # report and continue with the other variants
        import traceback

        traceback.print_exc()
        entry["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        runner = None  # noqa: F841
        gc.collect()
        if ON_GPU:
            torch.cuda.empty_cache()


def summarise(results, shape, flm_params, peak, matmul):
    for name, entry in results.items():
        if not entry.get("rounds_ms") or "error" in entry:
            continue
        medians = [statistics.median(r) for r in entry["rounds_ms"]]
        ms = statistics.median([t for r in entry["rounds_ms"] for t in r])
        flops = step_flops(shape, entry["params"])
        tflops = flops / (ms * 1e-3) / 1e12
        fb_ms = statistics.median([t for r in entry["fwd_bwd_rounds_ms"] for t in r])
        entry.update(fwd_bwd_ms=fb_ms, optimizer_ms=ms - fb_ms, fwd_bwd_tflops=flops / (fb_ms * 1e-3) / 1e12,
                     fwd_bwd_mfu_datasheet=flops / (fb_ms * 1e-3) / 1e12 / peak)
        entry.update(step_ms=ms, round_medians_ms=medians,
                     spread_pct=100 * (max(medians) - min(medians)) / ms, flops_per_step=flops,
                     tokens_per_s=shape["micro_batch"] * shape["seq"] / (ms * 1e-3), tflops=tflops,
                     mfu_datasheet=tflops / peak, mfu_matmul=tflops / matmul)
    ref = results.get("flm-xpos", {}).get("step_ms")
    for other in ("flm-rope", "peer", "flm-xpos-ref"):
        if ref and results.get(other, {}).get("step_ms"):
            results[other]["flm_xpos_time_ratio"] = ref / results[other]["step_ms"]


def table(results, peak, matmul) -> str:
    rows = [f"| variant | step ms | spread % | TFLOP/s | MFU vs {peak:g} | MFU vs matmul {matmul:.4g} | "
            f"fwd+bwd ms | fwd+bwd MFU vs {peak:g} | optimizer ms | peak GiB | loss first -> last |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in results.items():
        if "step_ms" not in e:
            rows.append(f"| {name} | failed: {e.get('error', 'no timing')} ||||||||||")
            continue
        mem = f"{e['peak_memory_gib']:.1f}" if e["peak_memory_gib"] is not None else "-"
        rows.append(f"| {name} | {e['step_ms']:.1f} | {e['spread_pct']:.1f} | {e['tflops']:.4g} | "
                    f"{100 * e['mfu_datasheet']:.1f}% | {100 * e['mfu_matmul']:.1f}% | {e['fwd_bwd_ms']:.1f} | "
                    f"{100 * e['fwd_bwd_mfu_datasheet']:.1f}% | {e['optimizer_ms']:.1f} | {mem} | "
                    f"{e['first_loss']:.3f} -> {e['last_loss']:.3f} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny shape (CPU smoke run)")
    for key, value in SHAPES["flm-1.4b"].items():
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None, help=f"default {value}")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 20 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 6 GPU, 1 CPU)")
    p.add_argument("--rounds", type=int, default=2, help="rounds cycling through the variants")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak")
    p.add_argument("--matmul-size", type=int, default=None, help="matmul ceiling size (8192 GPU, 256 CPU)")
    p.add_argument("--xpos-impl", default="auto", help="FLM_XPOS_IMPL for the fast variants")
    p.add_argument("--sdpa-backends", default="cudnn,flash,efficient,math",
                   help="FLM_SDPA_BACKENDS for the fast variants (order of preference)")
    p.add_argument("--compile", default=None, help="peer blocks' torch.compile backend: inductor | aot_eager | none")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    shape = dict(SHAPES["tiny" if args.tiny else "flm-1.4b"])
    for key in shape:
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    args.steps = args.steps or (20 if ON_GPU else 3)
    args.warmup = args.warmup if args.warmup is not None else (6 if ON_GPU else 1)
    args.compile = args.compile or ("inductor" if ON_GPU else "none")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]

    from flm_ext.config import ParallelConfig
    from flm_ext.model import fused
    from flm_ext.runtime import initialize_distributed

    if "WORLD_SIZE" not in os.environ:  # one process: in-process rendezvous (no port to clash)
        os.environ.pop("MASTER_PORT", None)
    initialize_distributed(ParallelConfig(), seed=1234)
    device = torch.device("cuda") if ON_GPU else torch.device("cpu")
    matmul = matmul_tflops(args.matmul_size or (8192 if ON_GPU else 256),
                           torch.bfloat16 if ON_GPU else torch.float32, device)
    print(f"shape {shape}; matmul ceiling {matmul:.1f} TFLOP/s", flush=True)
    results: dict = {}
    for round_ in range(args.rounds):
        for name in variants:
            if "error" in results.get(name, {}):
                continue
            t0 = time.time()
            run_variant(name, shape, args, results)
            e = results[name]
            last = statistics.median(e["rounds_ms"][-1]) if e.get("rounds_ms") and "error" not in e else float("nan")
            print(f"round {round_ + 1} {name}: median {last:.2f} ms/step ({time.time() - t0:.0f} s incl. build)",
                  flush=True)
    from flm_ext.config import FLMConfig, num_parameters

    flm_params = num_parameters(FLMConfig(num_layers=shape["layers"], hidden_size=shape["hidden"],
                                          num_attention_heads=shape["heads"], ffn_hidden_size=shape["ffn"],
                                          seq_length=shape["seq"], vocab_size=shape["vocab"]))
    summarise(results, shape, flm_params, args.peak_tflops, matmul)
    report = {
        "machine": {"device": torch.cuda.get_device_name() if ON_GPU else platform.processor() or "cpu",
                    "torch": torch.__version__, "python": platform.python_version(),
                    "triton": fused.triton_available(), "cuda": torch.version.cuda},
        "shape": shape, "flm_params": flm_params, "flops_per_step": step_flops(shape, flm_params),
        "peak_tflops": args.peak_tflops, "matmul_tflops": matmul, "steps": args.steps, "warmup": args.warmup,
        "rounds": args.rounds, "variants": results,
    }
    print(table(results, args.peak_tflops, matmul), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    from flm_ext.runtime import destroy_distributed

    destroy_distributed()
    return 0 if all("step_ms" in results.get(v, {}) for v in variants) else 1


if __name__ == "__main__":
    sys.exit(main())
