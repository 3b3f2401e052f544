#!/usr/bin/env python3
"""Serving throughput on one exported FLM, measured side by side on this machine: tokens/s of
tools/generate.py's decoding loop (generate_tokens, one prompt after another: it has no
concurrency), transformers `generate` (one prompt; a left-padded batch for 8), the transformers
fallback server and vLLM (tools/serve.py, HTTP over loopback) for 1 and 8 concurrent requests, and
time to first token (streamed requests). Every request generates exactly --new-tokens tokens
(ignore_eos) from the same prompts; greedy.

  python benchmarks/serve_throughput.py --load /tmp/flm-export --vllm-python VLLM_VENV/bin/python

Aggregate tokens/s = all generated tokens / wall time of the whole round (first request sent to
last response). Prints a markdown table and writes --json.
"""
import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPTS = ["In the beginning God created", "起初，神创造天地。", "And the earth was without form, and",
           "这条评论是正面的。", "And God said, Let there be light", "神说，要有光，就有了光。",
           "And God saw the light, that it was good", "In the land of"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rounds(run_one, n_concurrent: int, new: int, repeats: int) -> dict:
    """Median aggregate tokens/s over `repeats` rounds of `n_concurrent` requests."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        with ThreadPoolExecutor(n_concurrent) as pool:
            counts = list(pool.map(run_one, PROMPTS[:n_concurrent]))
        rates.append(sum(counts) / (time.perf_counter() - start))
        assert all(c == new for c in counts), counts
    return {"tokens_per_s": statistics.median(rates), "rounds": rates}


def bench_local(folder: str, new: int, repeats: int, loop_only: bool = False) -> dict:
    import torch

    from flm_ext.export.generation import generate_tokens, load_hf_model

    model, codec = load_hf_model(folder)
    out = {}

    def loop(prompt: str) -> int:
        return len(list(generate_tokens(model, codec.encode(prompt), new)))

    def sequential(n: int) -> float:
        start = time.perf_counter()
        total = sum(loop(p) for p in PROMPTS[:n])
        return total / (time.perf_counter() - start)

    out["generate.py loop"] = {n: statistics.median(sequential(n) for _ in range(repeats)) for n in (1, 8)}
    start = time.perf_counter()
    next(generate_tokens(model, codec.encode(PROMPTS[0]), 1))
    out["generate.py loop ttft_s"] = time.perf_counter() - start
    if loop_only:
        return out

    def hf(n: int) -> float:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, config=model.config)
        tok.padding_side, tok.pad_token = "left", tok.eos_token
        batch = tok(PROMPTS[:n], return_tensors="pt", padding=True)
        start = time.perf_counter()
        with torch.no_grad():
            gen = model.generate(**batch, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 pad_token_id=codec.eos)
        assert gen.shape[1] - batch["input_ids"].shape[1] == new
        return n * new / (time.perf_counter() - start)

    out["transformers generate"] = {n: statistics.median(hf(n) for _ in range(repeats)) for n in (1, 8)}
    return out


def bench_server(args, engine: str, folder: str, new: int, repeats: int, log: str) -> dict:
    from flm_ext.serving.client import post, stream, wait_ready

    port = free_port()
    env = dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    if args.vllm_python:
        env["VLLM_PYTHON"] = args.vllm_python
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "..", "tools", "serve.py"),
                             "--load", folder, "--engine", engine, "--port", str(port), "--served-model-name", "flm"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(url, args.start_timeout, alive=lambda: proc.poll() is None):
            raise RuntimeError(f"{engine} server did not start; see {log}")
        startup = time.perf_counter() - started

        def one(prompt: str) -> int:
            status, out = post(url + "/v1/completions", {"model": "flm", "prompt": prompt, "max_tokens": new,
                                                          "temperature": 0, "ignore_eos": True})
            assert status == 200, out
            return out["usage"]["completion_tokens"]

        one(PROMPTS[0])  # warm-up
        result = {n: rounds(one, n, new, repeats)["tokens_per_s"] for n in (1, 8)}
        ttfts = []
        for _ in range(repeats):
            first = []
            start = time.perf_counter()
            stream(url + "/v1/completions", {"model": "flm", "prompt": PROMPTS[0], "max_tokens": new,
                                             "temperature": 0, "ignore_eos": True},
                   on_event=lambda e: first.append(time.perf_counter()) if not first and e != "[DONE]" else None)
            ttfts.append(first[0] - start)
        return {"tokens_per_s": result, "ttft_s": statistics.median(ttfts), "startup_s": startup}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="an exported folder (head size 32/64/... for vLLM's CPU kernel)")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vllm-python", default=None, help="python with vLLM (default: $VLLM_PYTHON, else skip vLLM)")
    p.add_argument("--start-timeout", type=float, default=1500)
    p.add_argument("--json", default="serve_throughput.json")
    p.add_argument("--logs", default="/tmp", help="folder for the servers' logs")
    args = p.parse_args()
    args.vllm_python = args.vllm_python or os.environ.get("VLLM_PYTHON")
    config = json.load(open(os.path.join(args.load, "config.json")))
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "model": {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "head_dim",
                                                "vocab_size")},
               "new_tokens": args.new_tokens}
    results.update(bench_local(args.load, args.new_tokens, args.repeats))
    results["fallback server"] = bench_server(args, "transformers", args.load, args.new_tokens, args.repeats,
                                              os.path.join(args.logs, "serve_bench_fallback.log"))
    if args.vllm_python:
        results["vLLM"] = bench_server(args, "vllm", args.load, args.new_tokens, args.repeats,
                                       os.path.join(args.logs, "serve_bench_vllm.log"))
    # The machine's load drifts: the baseline again, right after the servers; ratios use the faster of
    # the two baselines (the smaller ratio).
    results["generate.py loop (again, after the servers)"] = bench_local(args.load, args.new_tokens, args.repeats,
                                                                         loop_only=True)["generate.py loop"]
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    base = max(results["generate.py loop"][8], results["generate.py loop (again, after the servers)"][8])
    print(f"model {results['model']}, {args.new_tokens} new tokens per request, median of {args.repeats}")
    print("| engine | 1 request tok/s | 8 concurrent tok/s (aggregate) | x generate.py at 8 | time to first token |")
    print("|---|---|---|---|---|")
    rows = [("tools/generate.py loop (sequential)", results["generate.py loop"], results["generate.py loop ttft_s"]),
            ("same, again after the servers", results["generate.py loop (again, after the servers)"], None),
            ("transformers generate (8: padded batch)", results["transformers generate"], None)]
    rows += [(name, results[name]["tokens_per_s"], results[name]["ttft_s"]) for name in ("fallback server", "vLLM")
             if name in results]
    for name, rate, ttft in rows:
        print(f"| {name} | {rate[1]:.1f} | {rate[8]:.1f} | {rate[8] / base:.1f}x | "
              f"{'-' if ttft is None else f'{ttft * 1000:.0f} ms'} |")


if __name__ == "__main__":
    main()
