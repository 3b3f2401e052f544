#!/usr/bin/env python3
"""Generate text from a trained FLM, streaming tokens as they are produced (KV cache; CPU or GPU):

  python tools/generate.py --load exports/flm-tiny --prompt "In the beginning" --max-new-tokens 64 --greedy
  python tools/generate.py --load runs/s3 --tokenizer-type HuggingFaceTokenizer --tokenizer-model data/bpe.json \\
      --prompt "起初" --temperature 0.8 --top-p 0.95 --top-k 50 --seed 1
  python tools/generate.py --load exports/flm-tiny --interactive

--load is an exported transformers folder (tools/export_hf.py) or a training checkpoint saved at
any TP/PP (converted in memory; then give the --tokenizer-* flags it was trained with).
An exported folder runs flm_ext's own model code; a folder whose code differs from it (edited,
another version's) is refused unless --trust-remote-code (flm_ext/export/loading.py).
See flm_ext/export/generation.py.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flm_ext import quiet_megatron_import_warnings  # noqa: E402

quiet_megatron_import_warnings()
from flm_ext.data.tokenizers import TOKENIZER_TYPES  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="exported folder, checkpoint root or iter_N folder")
    p.add_argument("--iteration", type=int, default=None, help="checkpoint iteration (default: the latest)")
    p.add_argument("--prompt", action="append", default=None, help="text to continue (repeat for several; or "
                                                                      "--interactive)")
    p.add_argument("--interactive", action="store_true", help="read prompts from standard input, one per line")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (the default without --temperature)")
    p.add_argument("--temperature", type=float, default=None, help="sample with this temperature")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--tokenizer-type", default=None, choices=TOKENIZER_TYPES)
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--vocab-file", default=None)
    p.add_argument("--merge-file", default=None)
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run model code from an exported folder that is not this flm_ext's own (edited, another "
                        "version, another model); without it such a folder is refused")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from flm_ext.export.generation import run_cli

    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
