#!/usr/bin/env python3
"""Export a training checkpoint (torch_dist, any TP/PP) to a transformers folder:

  python tools/export_hf.py --load runs/s3 --save exports/flm-tiny \\
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model data/bpe.json [--ckpt-step N] [--dtype bfloat16]

The folder loads with AutoTokenizer.from_pretrained(OUT) and
AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True). The tokenizer is not stored in a
checkpoint: give the --tokenizer-* flags the model was trained with. Reads tensor by tensor (memory:
about the largest tensor), builds OUT.partial/ and renames it when complete. --verify then loads the
export with AutoModelForCausalLM and prints `max abs logit diff: <value>` against the training model
(exit 1 above --tolerance). See flm_ext/export.
"""
import argparse
import sys

from flm_ext import quiet_megatron_import_warnings
from flm_ext.fileio import stop_cleanly_on_sigterm

quiet_megatron_import_warnings()
from flm_ext.data.tokenizers import TokenizerConfig  # noqa: E402
from flm_ext.export.options import ExportArgs  # noqa: E402
from flm_ext.flags import CheckpointStep, VerifyArgs, add_flags, from_args  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for config in (ExportArgs, CheckpointStep, VerifyArgs):
        add_flags(p, config)
    add_flags(p, TokenizerConfig, required=["tokenizer_type"])
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        verify = from_args(VerifyArgs, args)
    except ValueError as e:
        print(f"export_hf: error: {e}", file=sys.stderr, flush=True)
        return 2
    stop_cleanly_on_sigterm("export_hf")
    from flm_ext.export import ExportError, export_from_flags, open_for_export

    try:
        export_from_flags(args)
    except ExportError as e:
        print(f"export_hf: error: {e}", file=sys.stderr, flush=True)
        return 2
    if verify.verify:
        from flm_ext.export.verify import verify_export

        diff = verify_export(open_for_export(args.load, args.ckpt_step), args.save)
        failure = verify.judge(diff, "the export's logits and the training model's")
        if failure:
            print(f"export_hf: error: {failure}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
