#!/usr/bin/env python3
"""Build the small bilingual demo corpus (and teacher-signal data) from installed packages.

  python tools/build_demo_corpus.py --out data/demo
writes data/demo/{en,zh,teacher}_{train,valid}.jsonl and manifest.json.
See flm_ext/data/demo_corpus.py for the sources.
"""
import argparse
import sys

from flm_ext.data.demo_corpus import build_demo_corpus
from flm_ext.data.options import DemoCorpusArgs
from flm_ext.flags import add_flags


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, DemoCorpusArgs)
    a = p.parse_args(argv)
    build_demo_corpus(a.out, a.valid_fraction, a.seed, a.teacher_valid_fraction)
    print(f"wrote {a.out}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
