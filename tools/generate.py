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
import sys

from flm_ext import quiet_megatron_import_warnings

quiet_megatron_import_warnings()
from flm_ext.data.tokenizers import TokenizerConfig  # noqa: E402
from flm_ext.export.options import GenerateArgs, ModelSource  # noqa: E402
from flm_ext.flags import CheckpointStep, add_flags  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for config in (ModelSource, CheckpointStep, GenerateArgs, TokenizerConfig):
        add_flags(p, config)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from flm_ext.export.generation import run_cli

    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
