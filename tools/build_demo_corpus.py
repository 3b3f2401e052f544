#!/usr/bin/env python3
"""Build the small bilingual demo corpus (and teacher-signal data) from installed packages.

  python tools/build_demo_corpus.py --out data/demo
writes data/demo/{en,zh,teacher}_{train,valid}.jsonl and manifest.json.
See flm_ext/data/demo_corpus.py for the sources.
"""
import argparse
import sys

from flm_ext.data.demo_corpus import build_demo_corpus


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--valid-fraction", type=float, default=0.02, help="held-out share of documents")
    p.add_argument("--teacher-valid-fraction", type=float, default=0.1, help="held-out share of teacher samples")
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    build_demo_corpus(a.out, a.valid_fraction, a.seed, a.teacher_valid_fraction)
    print(f"wrote {a.out}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
