#!/usr/bin/env python3
"""Export time and peak memory against checkpoint size, and CPU decoding speed of our generation
loop against transformers' `generate`.

1. tools/export_hf.py on synthetic checkpoints (flm_ext.growth.synthetic: random weights, trainer
   layout, with Adam moments as a trainer writes them) of one width (hidden 1024, 8 heads, FFN 4096,
   GPT-2 vocabulary padded to 50,304) and more layers. Each export runs in its own process; peak
   RSS is that process's ru_maxrss (os.wait4). Streaming means it should follow the largest tensor
   (the embedding), not the checkpoint.
2. Decoding: one exported model (--decode-layers x 512, GPT-2 vocabulary), the same prompt; greedy,
   --new-tokens tokens, eos ignored, torch's default thread count. Ours is
   what tools/generate.py runs (`generate_text`: KV-cache loop + streaming text decoding); theirs is
   `model.generate(do_sample=False)` on the same model object. Runs alternate, best of --repeats;
   CPU ms per token (process time) is less sensitive than wall time to other load on the machine.

  python benchmarks/export_generate.py --workdir /tmp/export_bench --layers 2 8 24

prints markdown tables (docs/BENCHMARKS.md has the numbers from this machine).
"""
import argparse
import os
import re
import platform
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
WIDE = dict(hidden_size=1024, num_attention_heads=8, ffn_hidden_size=4096, vocab_size=50304, seq_length=2048)
GPT2 = ["--tokenizer-type", "GPT2BPETokenizer"]
PROMPT = "In the beginning God created the heaven and the earth. And the earth was without form, and void;"


def run(cmd: list[str]) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS in MiB, output, CPU seconds) of one child process."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1"))
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{cmd} failed:\n{output[-3000:]}")
    return time.time() - start, usage.ru_maxrss / 1024, output, usage.ru_utime + usage.ru_stime


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def synthetic(root: str, layers: int, shape: dict, optimizer: bool = True) -> None:
    make = ("import sys; sys.path.insert(0, %r)\n"
            "from flm_ext.config import FLMConfig\n"
            "from flm_ext.growth.synthetic import write_synthetic_checkpoint\n"
            "write_synthetic_checkpoint(%r, FLMConfig(num_layers=%d, **%r), optimizer=%r)\n") % (
        REPO, root, layers, shape, optimizer)
    run([sys.executable, "-c", make])


def export_rows(workdir: str, layer_counts: list[int], block_mb: int) -> list[dict]:
    tool = os.path.join(REPO, "tools", "export_hf.py")
    rows = []
    for layers in layer_counts:
        src, dst = os.path.join(workdir, f"ckpt_{layers}"), os.path.join(workdir, f"hf_{layers}")
        synthetic(src, layers, WIDE)
        seconds, rss, out, cpu = run([sys.executable, tool, "--load", src, "--save", dst, "--progress-interval", "60",
                                      "--block-mb", str(block_mb), *GPT2])
        writing = float(re.search(r"export: wrote .* in ([0-9.]+)s", out).group(1))
        row = dict(layers=layers, ckpt_gb=du(src) / 2 ** 30, out_gb=du(dst) / 2 ** 30, seconds=seconds, rss=rss,
                   cpu=cpu, writing=writing, block_mb=block_mb)
        rows.append(row)
        print(f"layers {layers}: checkpoint {row['ckpt_gb']:.2f} GiB -> export {row['out_gb']:.2f} GiB in "
              f"{seconds:.1f}s ({cpu:.1f} CPU s; writing {writing:.1f}s), peak RSS {rss:.0f} MiB", flush=True)
        shutil.rmtree(src)
        shutil.rmtree(dst)
    return rows


def decode_speed(workdir: str, layers: int, new_tokens: int, repeats: int) -> dict:
    """tokens/s of ours and transformers' generate on one exported model."""
    import torch

    from flm_ext.export.generation import Sampling, generate_text, load_hf_model

    src, dst = os.path.join(workdir, "decode_ckpt"), os.path.join(workdir, "decode_hf")
    synthetic(src, layers, dict(hidden_size=512, num_attention_heads=8, ffn_hidden_size=2048, vocab_size=50304,
                                seq_length=2048), optimizer=False)
    run([sys.executable, os.path.join(REPO, "tools", "export_hf.py"), "--load", src, "--save", dst, *GPT2])
    model, codec = load_hf_model(dst)
    codec.eos = None  # both sides produce exactly new_tokens tokens
    ids = torch.tensor([codec.encode(PROMPT)])
    ours, theirs, ours_cpu, theirs_cpu = [], [], [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        generate_text(model, codec, PROMPT, new_tokens, Sampling(greedy=True), on_text=lambda piece: None)
        ours.append(new_tokens / (time.perf_counter() - start))
        ours_cpu.append(1e3 * (time.process_time() - cpu) / new_tokens)
        start, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + new_tokens
        theirs.append(new_tokens / (time.perf_counter() - start))
        theirs_cpu.append(1e3 * (time.process_time() - cpu) / new_tokens)
    params = sum(p.numel() for p in model.parameters())
    shutil.rmtree(src)
    shutil.rmtree(dst)
    return dict(layers=layers, params=params, prompt=ids.shape[1], new=new_tokens, ours=max(ours),
                theirs=max(theirs), ours_cpu=min(ours_cpu), theirs_cpu=min(theirs_cpu),
                threads=torch.get_num_threads())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/export_bench")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 8, 24])
    p.add_argument("--decode-layers", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block-mb", type=int, nargs="+", default=[512], help="export_hf.py --block-mb values to run")
    p.add_argument("--no-decode", action="store_true", help="only the export table")
    args = p.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    _, baseline, _, _ = run([sys.executable, "-c", "import flm_ext.export.export, transformers"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"import-only RSS {baseline:.0f} MiB", flush=True)
    rows = [row for block in args.block_mb for row in export_rows(args.workdir, args.layers, block)]
    print("\n| layers | checkpoint (weights + Adam) | export (fp32) | largest tensor | --block-mb | export wall (CPU) | "
          "of which reading + writing | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    embedding_mib = WIDE["vocab_size"] * WIDE["hidden_size"] * 4 / 2 ** 20
    for r in rows:
        print(f"| {r['layers']} | {r['ckpt_gb']:.2f} GiB | {r['out_gb']:.2f} GiB | embedding {embedding_mib:.0f} MiB | "
              f"{r['block_mb']} | {r['seconds']:.1f} s ({r['cpu']:.1f} s) | {r['writing']:.1f} s | {r['rss']:.0f} MiB |")
    if args.no_decode:
        return 0
    s = decode_speed(args.workdir, args.decode_layers, args.new_tokens, args.repeats)
    print("\n| model | prompt | new tokens | tools/generate.py loop | transformers generate | threads |")
    print("|---|---|---|---|---|---|")
    print(f"| {s['layers']} x 512, {s['params'] / 1e6:.1f}M params, fp32 | {s['prompt']} tokens | {s['new']} | "
          f"{s['ours']:.1f} tokens/s ({s['ours_cpu']:.0f} CPU ms/token) | {s['theirs']:.1f} tokens/s "
          f"({s['theirs_cpu']:.0f} CPU ms/token) | {s['threads']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
