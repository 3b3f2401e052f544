#!/usr/bin/env python3
"""Evaluate an FLM checkpoint: held-out perplexity per language and zero-shot teacher-signal accuracy.

  python tools/evaluate.py --load runs/demo/stage3 --tokenizer-type HuggingFaceTokenizer \\
      --tokenizer-model runs/demo/data/bpe.json --valid-data en=runs/demo/data/corpus/en_valid.jsonl \\
      zh=runs/demo/data/corpus/zh_valid.jsonl --teacher-data runs/demo/data/corpus/teacher_valid.jsonl \\
      --output eval.json
--load takes a checkpoint root (its latest checkpoint) or an iter_N folder, saved at any TP/PP.
"""
import argparse
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex) .*not installed")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True)
    p.add_argument("--tokenizer-type", required=True,
                   choices=["CL100kTokenizer", "GPT2BPETokenizer", "HuggingFaceTokenizer"])
    p.add_argument("--tokenizer-model", default=None)
    p.add_argument("--vocab-file", default=None)
    p.add_argument("--merge-file", default=None)
    p.add_argument("--valid-data", nargs="*", default=[], metavar="LANG=FILE.jsonl")
    p.add_argument("--teacher-data", default=None, help="held-out {text, proposition, label} jsonl")
    p.add_argument("--max-teacher-samples", type=int, default=1000)
    p.add_argument("--output", default=None, help="write the results as JSON here too")
    args = p.parse_args(argv)

    files = {}
    for item in args.valid_data:
        lang, sep, path = item.partition("=")
        if not sep or not lang:
            p.error(f"--valid-data {item!r}: expected LANG=FILE.jsonl")
        if not os.path.exists(path):
            p.error(f"--valid-data {lang}: {path} does not exist")
        files[lang] = path
    if args.teacher_data and not os.path.exists(args.teacher_data):
        p.error(f"--teacher-data {args.teacher_data} does not exist")

    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.evaluation import evaluate
    from flm_ext.runtime import destroy_distributed
    from flm_ext.training.checkpointing import CheckpointError

    tokenizer = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file, args.tokenizer_model)
    try:
        result = evaluate(args.load, tokenizer, files, args.teacher_data, args.max_teacher_samples)
    except CheckpointError as error:
        print(f"evaluate.py: {error}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed()
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
