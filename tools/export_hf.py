#!/usr/bin/env python3
"""Export a training checkpoint (torch_dist, any TP/PP) to a transformers folder:

  python tools/export_hf.py --load runs/s3 --save exports/flm-tiny \\
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model data/bpe.json [--iteration N] [--dtype bfloat16]

The folder loads with AutoTokenizer.from_pretrained(OUT) and
AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True). The tokenizer is not stored in a
checkpoint: give the --tokenizer-* flags the model was trained with. Reads tensor by tensor (memory:
about the largest tensor), builds OUT.partial/ and renames it when complete. --verify then loads the
export with AutoModelForCausalLM and prints `max abs logit diff: <value>` against the training model
(exit 1 above --tolerance). See flm_ext/export.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flm_ext import quiet_megatron_import_warnings  # noqa: E402
from flm_ext.fileio import stop_cleanly_on_sigterm  # noqa: E402

quiet_megatron_import_warnings()
from flm_ext.data.tokenizers import TOKENIZER_TYPES  # noqa: E402


def add_tokenizer_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--tokenizer-type", required=required, choices=TOKENIZER_TYPES)
    p.add_argument("--tokenizer-model", default=None, help="tokenizer.json (HuggingFaceTokenizer) or a local "
                                                          "cl100k_base.tiktoken (CL100kTokenizer)")
    p.add_argument("--vocab-file", default=None, help="GPT-2 encoder.json (GPT2BPETokenizer)")
    p.add_argument("--merge-file", default=None, help="GPT-2 vocab.bpe (GPT2BPETokenizer)")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint root (latest iteration) or an iter_N folder")
    p.add_argument("--save", required=True, help="output folder; must not exist")
    p.add_argument("--iteration", type=int, default=None, help="iteration to export (default: the latest)")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    p.add_argument("--max-shard-mb", type=int, default=4096, help="largest safetensors shard")
    p.add_argument("--block-mb", type=int, default=512, help="tensors above this are read and written in row "
                                                             "blocks of this size (bounds memory)")
    p.add_argument("--progress-interval", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--verify", action="store_true", help="load the export with AutoModelForCausalLM and compare its "
                                                         "logits with the training model's on a probe batch")
    p.add_argument("--tolerance", type=float, default=1e-5)
    add_tokenizer_flags(p)
    return p.parse_args(argv)



def main(argv=None) -> int:
    args = parse_args(argv)
    stop_cleanly_on_sigterm("export_hf")
    from flm_ext.export import ExportError, export_from_flags, open_for_export

    try:
        export_from_flags(args)
    except ExportError as e:
        print(f"export_hf: error: {e}", file=sys.stderr, flush=True)
        return 2
    if args.verify:
        from flm_ext.export.verify import verify_export

        diff = verify_export(open_for_export(args.load, args.iteration), args.save)
        print(f"max abs logit diff: {diff:.3e}", flush=True)
        if not diff <= args.tolerance:
            print(f"export_hf: error: the export's logits differ from the training model's by {diff:.3e} > "
                  f"--tolerance {args.tolerance:g}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
