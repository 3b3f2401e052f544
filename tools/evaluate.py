#!/usr/bin/env python3
"""Evaluate an FLM checkpoint (saved at any TP/PP): our tasks and any lm-eval task, as JSON and a
markdown table with the random baseline and, where the paper reports one, its FLM-101B figure.

After `make demo`:
  python tools/evaluate.py --load runs/demo/stage3/ckpt --tokenizer-type HuggingFaceTokenizer \\
      --tokenizer-model runs/demo/data/bpe4096.json --tasks perplexity,teacher,iq --limit 20 \\
      --valid-data en=runs/demo/data/corpus/en_valid.jsonl zh=runs/demo/data/corpus/zh_valid.jsonl \\
      --teacher-data runs/demo/data/corpus/teacher_valid.jsonl --output eval.json --markdown eval.md

--tasks (comma-separated): perplexity (per language of --valid-data), teacher (zero-shot teacher
signal on --teacher-data), iq, iq_symbolic_mapping, iq_rule_understanding, iq_pattern_mining,
iq_anti_interference or one IQ sub-test (generated with --iq-seed/--iq-n unless --iq-dir names a
suite from tools/make_iq_tasks.py), and any lm-eval task (arc_challenge, hellaswag, mmlu,
truthfulqa_mc2, ceval-valid, ...; run at the paper's shot count unless --num-fewshot). Without
--tasks: perplexity if --valid-data is given, teacher if --teacher-data is given.
--load takes a checkpoint root (its latest checkpoint) or an iter_N folder, or an exported
transformers folder (tools/export_hf.py; then only --tasks perplexity).

Longer than trained (docs/long_context.md): --lengths 1x,2x,4x,8x (multiples of the training
length, or token counts such as 512) adds perplexity per language at each window length and per
position bucket; --blockwise-attention evaluates under the xPos paper's blockwise causal attention
(blocks of --blockwise-block-size tokens, default half the training length).
"""
import argparse
import os
import sys

from flm_ext import quiet_megatron_import_warnings

quiet_megatron_import_warnings()
from flm_ext.data.tokenizers import TokenizerConfig  # noqa: E402  (light: no torch)
from flm_ext.evaluation.options import EvalArgs  # noqa: E402
from flm_ext.flags import add_flags  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, EvalArgs, only=["load"])
    add_flags(p, TokenizerConfig, required=["tokenizer_type"])
    add_flags(p, EvalArgs, skip=["load"])
    return p


def _check(p, args) -> tuple[list[str], dict]:
    """Task list and --valid-data files; every problem is one p.error line (exit 2)."""
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
    from flm_ext.evaluation import tasks as registry  # light: no torch

    def given(flag: str) -> bool:
        return bool(getattr(args, flag.lstrip("-").replace("-", "_")))

    if args.tasks is None:
        tasks = registry.defaults(given)
    else:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        p.error("nothing to evaluate: give --tasks, or the inputs of a default task ("
                + "; ".join(f"{t.name}: {' '.join(f for f, _ in t.needs)}" for t in registry.tasks()
                            if t.default) + ")")
    for name in tasks:
        for flag, metavar in getattr(registry.find(name), "needs", ()):
            if not given(flag):
                p.error(f"--tasks {name} needs {flag} {metavar}")
    for path in [args.iq_dir] + args.include_path:
        if path and not os.path.isdir(path):
            p.error(f"{'--iq-dir' if path == args.iq_dir else '--include-path'} {path} is not a folder")
    if not os.path.exists(args.load):
        p.error(f"--load {args.load} does not exist")
    for flag, value, least in (("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                               ("--iq-n", args.iq_n, 1), ("--max-teacher-samples", args.max_teacher_samples, 1),
                               ("--num-fewshot", args.num_fewshot, 0)):
        if value is not None and value < least:
            p.error(f"{flag} {value} must be >= {least}" + (" (items per task; leave it out for all)"
                                                            if flag == "--limit" else ""))
    if args.lengths is not None:
        from flm_ext.evaluation.lengths import parse_lengths

        try:
            args.lengths = parse_lengths(args.lengths)
        except ValueError as error:
            p.error(str(error))
        if "perplexity" not in tasks:
            p.error("--lengths needs --tasks perplexity (and --valid-data)")
    if args.blockwise_block_size is not None and not args.blockwise_attention:
        p.error("--blockwise-block-size needs --blockwise-attention")
    if args.blockwise_block_size is not None and args.blockwise_block_size < 1:
        p.error(f"--blockwise-block-size {args.blockwise_block_size} must be >= 1")
    if args.max_eval_tokens < 1:
        p.error(f"--max-eval-tokens {args.max_eval_tokens} must be >= 1")
    if os.path.isfile(os.path.join(args.load, "config.json")) and not all(
            getattr(registry.find(t), "on_export", False) for t in tasks):
        p.error(f"--load {args.load} is an exported model: only --tasks "
                f"{', '.join(t.name for t in registry.tasks() if t.on_export)} runs on it")
    return tasks, files


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    tasks, files = _check(p, args)
    print("evaluate.py: loading torch, megatron-core and lm-eval (can take ~30 s) ...", file=sys.stderr, flush=True)

    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.evaluation.runner import evaluate_checkpoint, evaluate_export
    from flm_ext.fileio import atomic_write, atomic_write_json
    from flm_ext.runtime import destroy_distributed
    from flm_ext.checkpoint import CheckpointError
    from flm_ext.evaluation.core import TooFewTokens

    try:
        tokenizer = build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file, args.tokenizer_model)
    except (ValueError, OSError) as error:
        print(f"evaluate.py: {error}", file=sys.stderr)
        return 2
    block = (args.blockwise_block_size or 0) if args.blockwise_attention else None  # 0: the default block
    try:
        if os.path.isfile(os.path.join(args.load, "config.json")):
            result = evaluate_export(args.load, tokenizer, tasks, valid_files=files, lengths=args.lengths,
                                     blockwise_block=block, max_eval_tokens=args.max_eval_tokens,
                                     batch_size=args.batch_size)
        else:
            result = evaluate_checkpoint(
                args.load, tokenizer, tasks, valid_files=files, teacher_file=args.teacher_data,
                max_teacher_samples=args.max_teacher_samples, iq_dir=args.iq_dir, iq_seed=args.iq_seed,
                iq_n=args.iq_n, iq_langs=tuple(args.iq_lang.split(",")), include_paths=args.include_path,
                limit=args.limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                workdir=os.path.dirname(os.path.abspath(args.output)) if args.output else None,
                lengths=args.lengths, blockwise_block=block, max_eval_tokens=args.max_eval_tokens)
    except TooFewTokens as error:
        print(f"evaluate.py: --valid-data {error}", file=sys.stderr)
        return 2
    except CheckpointError as error:
        print(f"evaluate.py: --load {args.load}: {error}", file=sys.stderr)
        return 2
    except KeyError as error:
        print(f"evaluate.py: {error.args[0]}", file=sys.stderr)
        return 2
    finally:
        destroy_distributed()
    print(result["table"])
    if args.output:
        atomic_write_json(args.output, result)
    if args.markdown:
        atomic_write(args.markdown, result["table"] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
