#!/usr/bin/env python3
"""Time and peak memory of tools/grow_checkpoint.py on synthetic checkpoints of increasing size.

The growth tool streams tensor by tensor, so its peak RSS should follow the largest tensor chunk
and the output bucket (--bucket-mb), not the checkpoint size. Each size is a checkpoint of the same
width (hidden 1024, 8 heads, FFN 4096, vocab 8192; fp32 weights + Adam moments, like a trainer
checkpoint) with more layers, grown in width like FLM's 16B -> 51B (hidden x1.5, heads x1.5, FFN
x1.5). Every step runs in its own process; peak RSS is that process's ru_maxrss (os.wait4).

  python benchmarks/grow_checkpoint_memory.py --workdir /tmp/grow_bench --layers 1 3 6 13

prints a markdown table (docs/BENCHMARKS.md has the numbers from this machine).
"""
import argparse
import os
import platform
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(hidden_size=1024, num_attention_heads=8, ffn_hidden_size=4096, vocab_size=8192, seq_length=2048)
GROWN = dict(hidden_size=1536, num_attention_heads=12, ffn_hidden_size=6144)


def run(cmd: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, output) of one child process."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{output[-3000:]}")
    return time.time() - start, usage.ru_maxrss / 1024, output


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/grow_bench")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 3, 6, 13])
    p.add_argument("--bucket-mb", type=int, default=256)
    args = p.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    tool = os.path.join(REPO, "tools", "grow_checkpoint.py")
    _, baseline, _ = run([sys.executable, "-c", "import flm_ext.growth.offline"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"import-only RSS {baseline:.0f} MiB", flush=True)
    rows = []
    for layers in args.layers:
        src, dst = os.path.join(args.workdir, f"src_{layers}"), os.path.join(args.workdir, f"grown_{layers}")
        make = ("import sys; sys.path.insert(0, %r)\n"
                "from flm_ext.config import get_preset\n"
                "from flm_ext.growth.synthetic import write_synthetic_checkpoint\n"
                "write_synthetic_checkpoint(%r, get_preset('tiny-stage1', num_layers=%d, **%r))\n"
                ) % (REPO, src, layers, BASE)
        make_s, make_rss, _ = run([sys.executable, "-c", make])
        grow_s, grow_rss, out = run([sys.executable, tool, "--load", src, "--save", dst, "--progress-interval", "30",
                                     "--bucket-mb", str(args.bucket_mb),
                                     *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in GROWN.items()), [])])
        largest = [line for line in out.splitlines() if "largest chunk" in line][0].split("largest chunk ")[1]
        row = dict(layers=layers, src_gb=du(src) / 2 ** 30, dst_gb=du(dst) / 2 ** 30, make_s=make_s, make_rss=make_rss,
                   grow_s=grow_s, grow_rss=grow_rss, largest=largest)
        rows.append(row)
        print(f"layers {layers}: {row['src_gb']:.2f} GiB -> {row['dst_gb']:.2f} GiB in {grow_s:.1f}s, peak RSS "
              f"{grow_rss:.0f} MiB (writing the input: {make_s:.1f}s, {make_rss:.0f} MiB)", flush=True)
        shutil.rmtree(src)
        shutil.rmtree(dst)
    print("\n| layers | input checkpoint | grown checkpoint | largest output chunk | grow time | grow MiB/s | "
          "grow peak RSS | synthetic writer peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layers']} | {r['src_gb']:.2f} GiB | {r['dst_gb']:.2f} GiB | {r['largest']} | {r['grow_s']:.1f} s | "
              f"{r['dst_gb'] * 1024 / r['grow_s']:.0f} | {r['grow_rss']:.0f} MiB | {r['make_rss']:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
