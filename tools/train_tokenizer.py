#!/usr/bin/env python3
"""Train a small byte-level BPE (a tokenizer.json) on jsonl files, for the tiny models.

  python tools/train_tokenizer.py --input data/demo/en_train.jsonl data/demo/zh_train.jsonl \\
      --vocab-size 8192 --output data/demo/bpe8k.json
Use it with --tokenizer-type HuggingFaceTokenizer --tokenizer-model data/demo/bpe8k.json.
"""
import argparse
import os
import sys
import time

from flm_ext.data.options import BPEArgs
from flm_ext.data.train_bpe import train_bpe
from flm_ext.flags import add_flags
from flm_ext.progress import format_duration


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, BPEArgs)
    a = p.parse_args(argv)
    problem = (f"--vocab-size {a.vocab_size} must exceed the 256 byte tokens" if a.vocab_size < 257 else
               f"--min-frequency {a.min_frequency} must be >= 1" if a.min_frequency < 1 else
               next((f"--input {path} does not exist" for path in a.input if not os.path.isfile(path)), None))
    if problem:
        print(f"train_tokenizer: error: {problem}", file=sys.stderr)
        return 2
    print(f"train_tokenizer: training a {a.vocab_size:,}-token byte-level BPE on {len(a.input)} file(s) ...",
          flush=True)
    start = time.time()
    try:
        train_bpe(a.input, a.output, a.vocab_size, a.min_frequency, a.json_key)
    except ValueError as e:  # a bad line: file:line and why
        print(f"train_tokenizer: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"train_tokenizer: error: {e}", file=sys.stderr)
        return 1
    print(f"train_tokenizer: wrote {a.output} in {format_duration(time.time() - start)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
