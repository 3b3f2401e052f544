#!/usr/bin/env python3
"""Generate the IQ-style test suite offline and deterministically (same seed: identical files).

  python tools/make_iq_tasks.py --out runs/iq_tasks --seed 1234 --n 100 --lang en,zh

Writes, per sub-test, a jsonl of items and an lm-eval task YAML (dataset_path: json), one group
per family (iq_symbolic_mapping, iq_rule_understanding, iq_pattern_mining,
iq_anti_interference), the group `iq`, and manifest.json with each sub-test's random baseline.
Every item is checked against an independent solver before anything is written. The YAMLs name
their jsonl files by absolute path (lm-eval resolves data_files from the working directory): to
use a suite elsewhere, regenerate it there (same seed, same items) rather than moving it. Use with
  python tools/evaluate.py --load CKPT ... --tasks iq --iq-dir runs/iq_tasks
  python -m flm_ext.evaluation.lm_eval_cli --model flm --model_args load=CKPT,... --tasks iq \\
      --include_path runs/iq_tasks
"""
import argparse
import os
import sys

from flm_ext.evaluation.options import IQSuiteArgs
from flm_ext.flags import add_flags


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, IQSuiteArgs)
    args = p.parse_args(argv)
    langs = tuple(x for x in args.lang.split(",") if x)
    if not langs or any(x not in ("en", "zh") for x in langs):
        p.error(f"--lang {args.lang!r}: choose from en, zh (comma-separated)")
    if args.n < 1:
        p.error(f"--n {args.n}: at least 1 item per sub-test")
    if os.path.lexists(args.out):
        p.error(f"--out {args.out} already exists")

    from flm_ext.evaluation.iq import suite
    from flm_ext.progress import Progress

    progress = Progress(len(suite.select(langs)), "make_iq_tasks", unit="sub-tests", interval=2.0)
    manifest = suite.write_suite(args.out, seed=args.seed, n=args.n, langs=langs, progress=progress)
    print(f"wrote {len(manifest['subtests'])} sub-tests x {args.n} items to {args.out} (seed {args.seed})")
    for name, info in manifest["subtests"].items():
        print(f"  {name:<28} {info['output']:<8} {info['shots']}-shot  random baseline {info['random_baseline']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
