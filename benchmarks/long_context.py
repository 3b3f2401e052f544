"""Longer than trained: xPos vs plain rope, with and without blockwise causal attention (BCA).

    python benchmarks/long_context.py --out runs/long_context   # 38 min on the 2-core box under heavy load

One command, from nothing: the demo's bilingual corpus and BPE (flm_ext/recipe.py), then the same
tiny model (the demo's stage-1 shape, 4 x 64, 4 heads) trained twice with identical data, steps,
batches, LR schedule and seed, once with xPos and once with rope (`--position-embedding-type`),
at a short training length (64 tokens, so 8x is still cheap); then per-language held-out
perplexity of both at 1x/2x/4x/8x the training length, each with and without BCA
(flm_ext/evaluation/lengths.py, on the training model). Writes `result.json`, `table.md` and
`long_context.png` (perplexity over length, and over position inside the longest window).

xPos's decay is set relative to the training length: FLM trains 2,048 tokens with scale base 512
(the decay exponent reaches 4 across a training window); `--xpos-scale-base` defaults to a quarter
of `--seq-length` to keep that ratio (at 64 tokens the absolute 512 would leave xPos all but
identical to rope inside the window). Reports what it measures, whichever way it goes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flm_ext import quiet_megatron_import_warnings  # noqa: E402

quiet_megatron_import_warnings()

from flm_ext.recipe import REPO, RecipeConfig, Runner, _metrics, prepare_data  # noqa: E402

VARIANTS = ("xpos", "rope")


def train(args, run: Runner, data: dict, variant: str) -> dict:
    out = os.path.join(args.out, variant)
    ckpt, metrics = os.path.join(out, "ckpt"), os.path.join(out, "metrics.jsonl")
    marker = os.path.join(ckpt, "latest_checkpointed_iteration.txt")
    if args.reuse and os.path.exists(marker) and open(marker).read().strip() == str(args.steps):
        run.say(f"{variant}: reusing {ckpt} (iteration {args.steps})")
    else:
        if os.path.exists(out):
            import shutil

            shutil.rmtree(out)  # never resume a run of another length or schedule
        run.run(f"train {variant}", [
            os.path.join(REPO, "pretrain_flm.py"), "--model-preset", "tiny-stage1", "--seq-length", str(args.seq_length),
            "--position-embedding-type", variant, "--xpos-scale-base", str(args.xpos_scale_base), *data["tok"],
            "--data-path", "0.535", data["en"], "0.465", data["zh"], "--split", "98,2,0",
            "--data-cache-path", data["cache"], "--micro-batch-size", "16", "--global-batch-size", "16",
            "--train-iters", str(args.steps), "--lr", "3e-3", "--min-lr", "3e-4",
            "--lr-warmup-iters", str(max(1, args.steps // 40)), "--log-interval", "50",
            "--eval-interval", str(args.steps), "--eval-iters", "4", "--save", ckpt, "--metrics-jsonl", metrics,
            "--seed", str(args.seed)], echo=lambda line: line.startswith(("step", "saved", "FLM")))
    rows = _metrics(metrics)
    return {"checkpoint": ckpt, "final_train_loss": [r for r in rows if "train/loss" in r][-1]["train/loss"],
            "final_valid_loss": [r for r in rows if "valid/loss" in r][-1]["valid/loss"]}


def evaluate(args, run: Runner, data: dict, checkpoint: str) -> dict:
    """{"plain"|"bca": perplexity_by_length(...)} of one checkpoint, on the training model."""
    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.evaluation.core import load_model, model_logits_fn
    from flm_ext.evaluation.lengths import parse_lengths, perplexity_by_length, resolve
    from flm_ext.model.blockwise import default_block, set_blockwise_attention

    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=data["tokenizer"])
    model, config, _ = load_model(checkpoint)
    lengths = resolve(parse_lengths(args.lengths), config.seq_length)
    files = {lang: os.path.join(data["corpus"], f"{lang}_valid.jsonl") for lang in ("en", "zh")}
    out = {}
    for mode, block in (("plain", None), ("bca", default_block(config.seq_length))):
        set_blockwise_attention(model, block)
        started = time.time()
        out[mode] = perplexity_by_length(model_logits_fn(model), tok, files, lengths, config.seq_length,
                                         max_tokens=args.eval_tokens, batch_size=16)
        run.say(f"evaluated {mode} in {time.time() - started:.0f} s")
    return out


def table(result: dict) -> str:
    lengths = result["lengths"]
    train = result["seq_length"]
    lines = ["| language | model | attention | " + " | ".join(f"{n // train}x ({n})" for n in lengths) + " |",
             "|---|---|---|" + "---|" * len(lengths)]
    for lang in ("en", "zh"):
        for variant in VARIANTS:
            for mode, label in (("plain", "full causal"), ("bca", "BCA")):
                per = result["eval"][variant][mode]["languages"][lang]
                lines.append(f"| {lang} | {variant} | {label} | "
                             + " | ".join(f"{per[str(n)]['perplexity']:.2f}" for n in lengths) + " |")
    longest = str(lengths[-1])
    width = result["eval"]["xpos"]["plain"]["bucket_width"]
    buckets = result["eval"]["xpos"]["plain"]["languages"]["en"][longest]["buckets"]
    lines += ["", f"Perplexity by position inside the {longest}-token window (buckets of {width} positions):", "",
              "| language | model | attention | " + " | ".join(f"{b['start']}-{b['end']}" for b in buckets) + " |",
              "|---|---|---|" + "---|" * len(buckets)]
    for lang in ("en", "zh"):
        for variant in VARIANTS:
            for mode, label in (("plain", "full causal"), ("bca", "BCA")):
                per = result["eval"][variant][mode]["languages"][lang][longest]
                lines.append(f"| {lang} | {variant} | {label} | "
                             + " | ".join(f"{b['perplexity']:.2f}" for b in per["buckets"]) + " |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, train = result["lengths"], result["seq_length"]
    longest = str(lengths[-1])
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    style = {("xpos", "plain"): ("tab:blue", "-"), ("xpos", "bca"): ("tab:blue", "--"),
             ("rope", "plain"): ("tab:orange", "-"), ("rope", "bca"): ("tab:orange", "--")}
    for col, lang in enumerate(("en", "zh")):
        for (variant, mode), (color, line) in style.items():
            per = result["eval"][variant][mode]["languages"][lang]
            label = f"{variant}, {'BCA' if mode == 'bca' else 'full causal'}"
            axes[0, col].plot([n / train for n in lengths], [per[str(n)]["perplexity"] for n in lengths], "o" + line,
                              color=color, label=label)
            buckets = per[longest]["buckets"]
            axes[1, col].plot([(b["start"] + b["end"]) / 2 / train for b in buckets],
                              [b["perplexity"] for b in buckets], "o" + line, color=color, label=label)
        axes[0, col].set_xscale("log", base=2)
        axes[0, col].set_xlabel("window length / training length")
        axes[0, col].set_ylabel("held-out perplexity")
        axes[0, col].set_title(f"{lang}: perplexity over window length (trained at {train} tokens)")
        axes[1, col].set_xlabel("position in the window / training length")
        axes[1, col].set_ylabel("perplexity of the bucket")
        axes[1, col].set_title(f"{lang}: by position inside a {longest}-token window")
        axes[1, col].axvline(1.0, color="gray", linestyle=":")
        for ax in axes[:, col]:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
    fig.suptitle(f"xPos vs rope beyond the training length: demo stage-1 shape, {result['steps']} steps, "
                 f"xPos scale base {result['xpos_scale_base']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/long_context")
    p.add_argument("--seq-length", type=int, default=64, help="training length")
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--xpos-scale-base", type=int, default=None, help="default: seq-length / 4 (FLM's 2048 / 512)")
    p.add_argument("--lengths", default="1x,2x,4x,8x")
    p.add_argument("--eval-tokens", type=int, default=8_000, help="held-out tokens per language")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--reuse", action="store_true", help="reuse data and checkpoints already in --out")
    args = p.parse_args(argv)
    args.xpos_scale_base = args.xpos_scale_base or max(1, args.seq_length // 4)
    os.makedirs(args.out, exist_ok=True)
    run = Runner(args.out)
    started = time.time()
    cfg = RecipeConfig(out=args.out, stages=())
    data_dir = os.path.join(args.out, "data")
    if args.reuse and os.path.exists(os.path.join(data_dir, f"bpe{cfg.vocab_size}.json")):
        corpus = os.path.join(data_dir, "corpus")
        tokenizer = os.path.join(data_dir, f"bpe{cfg.vocab_size}.json")
        data = {"tokenizer": tokenizer, "corpus": corpus, "cache": os.path.join(data_dir, "cache"),
                "tok": ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer],
                "en": os.path.join(data_dir, "en_text_document"), "zh": os.path.join(data_dir, "zh_text_document")}
    else:
        data = prepare_data(cfg, run)
    result = {"seq_length": args.seq_length, "steps": args.steps, "xpos_scale_base": args.xpos_scale_base,
              "seed": args.seed, "eval_tokens": args.eval_tokens, "train": {}, "eval": {}}
    # Both trainings at once: on a shared machine two processes get twice one's share of the CPUs.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(VARIANTS)) as pool:
        trained = {v: pool.submit(train, args, run, data, v) for v in VARIANTS}
        result["train"] = {v: job.result() for v, job in trained.items()}
    for variant in VARIANTS:
        run.say(f"evaluating {variant} at {args.lengths} x {args.seq_length}, with and without BCA")
        result["eval"][variant] = evaluate(args, run, data, result["train"][variant]["checkpoint"])
    result["lengths"] = result["eval"]["xpos"]["plain"]["lengths"]
    result["wall_s"] = time.time() - started
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = table(result)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md + "\n")
    plot(result, os.path.join(args.out, "long_context.png"))
    print(md)
    run.say(f"done in {result['wall_s']:.0f} s: {args.out}/result.json, table.md, long_context.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
