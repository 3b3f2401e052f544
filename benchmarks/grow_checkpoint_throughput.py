#!/usr/bin/env python3
"""tools/grow_checkpoint.py against the disk: growth time versus copying the same bytes, in one run.

A synthetic trainer checkpoint (fp32 weights + Adam moments, hidden 1024 -> 1536, heads 8 -> 12,
FFN 4096 -> 6144, the issue's FLM-like 1.5x width step; 14 layers = 2.1 GiB by default) is grown
with --workers 1 and with --workers N, each as a whole process (start-up included) followed by
`sync`. The baseline moves the same bytes with the system's tools: `cp -r` of the input (reads
it, writes its size) plus `dd` of the rest of the output's size, then `sync`. Before every timed
step the input's pages are evicted (posix_fadvise DONTNEED), so each reads from the disk (or what
the disk's cache below the OS keeps). Reports each run's seconds, rate (input read + output written
per second), its ratio to the copy's rate, its CPU seconds (user + system: under load the
steadier measure of the work done), peak RSS (the largest of the tool's processes: ru_maxrss
from wait4 covers its workers), and whether the outputs of 1 and N workers are byte-identical.

  python benchmarks/grow_checkpoint_throughput.py --workdir /tmp/grow_tp --layers 14 --workers 2
"""
import argparse
import filecmp
import os
import platform
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = dict(hidden_size=1024, num_attention_heads=8, ffn_hidden_size=4096, vocab_size=8192, seq_length=2048)
GROWN = dict(hidden_size=1536, num_attention_heads=12, ffn_hidden_size=6144)


def files(path: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, names in os.walk(path) for f in names)


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in files(path))


def evict(path: str) -> None:
    for name in files(path):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(cmd: list[str], shell: bool = False) -> tuple[float, float, str, float]:
    """(seconds including the sync that follows, peak RSS MiB, output, CPU seconds: user + system
    of the child and its children) of one child."""
    subprocess.run(["sync"], check=True)
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, shell=shell,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{cmd} failed:\n{output[-3000:]}")
    subprocess.run(["sync"], check=True)
    return time.time() - start, usage.ru_maxrss / 1024, output, usage.ru_utime + usage.ru_stime


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/grow_tp")
    p.add_argument("--layers", type=int, default=14)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--bucket-mb", type=int, default=256)
    args = p.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    src = os.path.join(args.workdir, "src")
    make = ("import sys; sys.path.insert(0, %r)\n"
            "from flm_ext.config import get_preset\n"
            "from flm_ext.growth.synthetic import write_synthetic_checkpoint\n"
            "write_synthetic_checkpoint(%r, get_preset('tiny-stage1', num_layers=%d, **%r))\n"
            ) % (REPO, src, args.layers, BASE)
    timed([sys.executable, "-c", make])
    in_bytes = du(src)
    print(f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; input "
          f"{in_bytes / 2 ** 30:.2f} GiB ({args.layers} layers); {load()}", flush=True)
    tool = [sys.executable, os.path.join(REPO, "tools", "grow_checkpoint.py"), "--load", src, "--progress-interval",
            "60", "--bucket-mb", str(args.bucket_mb),
            *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in GROWN.items()), [])]
    runs = {}
    for workers in (1, args.workers):
        out = os.path.join(args.workdir, f"grown_w{workers}")
        evict(src)
        seconds, rss, _, cpu = timed(tool + ["--save", out, "--workers", str(workers)])
        runs[workers] = (seconds, rss, cpu)
        print(f"grow --workers {workers}: {seconds:.1f} s, {cpu:.1f} CPU s, peak RSS {rss:.0f} MiB; {load()}",
              flush=True)
    out_bytes = du(os.path.join(args.workdir, "grown_w1"))
    one, many = (os.path.join(args.workdir, f"grown_w{w}") for w in (1, args.workers))
    identical = files(one) == files(many) and all(
        filecmp.cmp(os.path.join(one, f), os.path.join(many, f), shallow=False) for f in files(one))
    shutil.rmtree(many)
    shutil.rmtree(one)
    copy = os.path.join(args.workdir, "copy")
    extra_mib = (out_bytes - in_bytes) // 2 ** 20
    evict(src)
    copy_s, _, _, copy_cpu = timed(f"cp -r {src} {copy} && dd if=/dev/zero of={copy}/pad bs=1M count={extra_mib} status=none",
                         shell=True)
    print(f"copy (cp + dd, same bytes): {copy_s:.1f} s, {copy_cpu:.1f} CPU s; {load()}", flush=True)
    shutil.rmtree(copy)
    moved = (in_bytes + out_bytes) / 2 ** 20
    print(f"\nbytes moved per run: {in_bytes / 2 ** 30:.2f} GiB read + {out_bytes / 2 ** 30:.2f} GiB written; "
          f"outputs of 1 and {args.workers} workers byte-identical: {identical}\n")
    print("| run | seconds | MiB/s (read + written) | vs copy | CPU s (user + sys) | peak RSS |")
    print("|---|---|---|---|---|---|")
    print(f"| cp + dd (same bytes) + sync | {copy_s:.1f} | {moved / copy_s:.0f} | 100% | {copy_cpu:.1f} | |")
    for workers, (seconds, rss, cpu) in runs.items():
        print(f"| grow_checkpoint.py --workers {workers} + sync | {seconds:.1f} | {moved / seconds:.0f} | "
              f"{copy_s / seconds:.0%} | {cpu:.1f} | {rss:.0f} MiB |")
    shutil.rmtree(args.workdir)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
