"""What a process pays to start: importing megatron-core (everything a training run or a tool imports
from it) with torch.compile's decoration deferred to the first call (what every entry point does,
flm_ext.defer_torch_compile_of_functions) and without, alternating, in fresh interpreters.

    python benchmarks/startup.py --rounds 6

Prints the median wall and CPU seconds of each variant and their difference; the machine's load moves
both alike because the variants alternate.
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORTS = ("import megatron.core, megatron.core.optimizer, megatron.core.dist_checkpointing\n"
           "from megatron.core.models.gpt import GPTModel\n")
VARIANTS = {
    "megatron-core import, torch.compile as is": "import torch\n" + IMPORTS,
    "megatron-core import, compile deferred (entry points)":
        "import torch\nfrom flm_ext import defer_torch_compile_of_functions\ndefer_torch_compile_of_functions()\n" + IMPORTS,
}


def _run(code: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, env={**os.environ, "PYTHONPATH": REPO})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="runs of each variant, alternating")
    args = parser.parse_args(argv)
    times = {name: [] for name in VARIANTS}
    for i in range(args.rounds):
        for name, code in VARIANTS.items():
            times[name].append(_run(code))
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{args.rounds} runs of each variant, alternating; medians\n")
    print("| variant | wall s | CPU s |\n|---|---|---|")
    medians = {}
    for name, runs in times.items():
        medians[name] = (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        print(f"| {name} | {medians[name][0]:.2f} | {medians[name][1]:.2f} |")
    (w0, c0), (w1, c1) = medians.values()
    print(f"\ndeferred saves {w0 - w1:.2f} s wall and {c0 - c1:.2f} s CPU per process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
