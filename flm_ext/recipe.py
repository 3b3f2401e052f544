"""The whole FLM recipe in miniature: corpus -> BPE -> preprocessing -> stage 1 -> width growth ->
stage 2 -> depth growth -> stage 3 -> evaluation, with a summary, a loss plot and TensorBoard logs.

Every step runs the project's own user-facing command (tools/*.py, pretrain_flm.py) as a
subprocess, exactly as a user would, so the demo exercises what the big runs use; what it reports
comes from the files those commands write (metrics jsonl, checkpoints, and the JSON of --verify-json
and --output), never from their printed text. The shapes mirror FLM-101B's path at CPU scale:
stage 1 is 4 x 64 (4 heads), width growth doubles hidden, FFN and heads (4 x 128, 8 heads; head
size fixed), depth growth doubles the layers (8 x 128).
A control run trains stage 1 without teacher-signal data, so the zero-shot accuracy the teacher
signal buys is reported side by side.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from flm_ext.config import FLMConfig, get_preset, num_parameters
from flm_ext.progress import format_duration
from flm_ext.training.metrics import flops_per_token

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Stage:
    name: str
    preset: str
    steps: int
    lr: float
    min_lr: float
    warmup: int


@dataclass(frozen=True)
class RecipeConfig:
    out: str
    stages: tuple[Stage, ...]
    vocab_size: int = 4096
    seq_length: int = 128
    micro_batch_size: int = 8
    global_batch_size: int = 16
    # Half of every batch is teacher samples: at this scale the model needs many label tokens before
    # it learns more than the label prior (benchmarks/teacher_signal_probe.py, docs/BENCHMARKS.md).
    teacher_fraction: float = 0.5
    growth_ramp_steps: int = 20
    eval_interval: int = 50
    eval_iters: int = 4
    max_teacher_samples: int = 1000
    iq_items: int = 4  # items per IQ sub-test for the final model (18 sub-tests: about half a minute)
    control_run: bool = True
    seed: int = 1234


def default_recipe(out: str, scale: float = 1.0) -> RecipeConfig:
    """The demo's schedule; `scale` < 1 shortens every stage (the test suite uses a small scale)."""
    def steps(n, least=4):
        return max(least, int(round(n * scale)))
    stages = (
        Stage("stage1", "tiny-stage1", steps(800), 3e-3, 3e-4, steps(20, 1)),
        Stage("stage2", "tiny-stage2", steps(250), 2e-3, 2e-4, steps(10, 1)),
        Stage("stage3", "tiny-stage3", steps(200), 1.5e-3, 1.5e-4, steps(10, 1)),
    )
    return RecipeConfig(out=out, stages=stages, growth_ramp_steps=steps(20), eval_interval=steps(50),
                        max_teacher_samples=1000 if scale >= 1 else 60, iq_items=4 if scale >= 1 else 2)


class Runner:
    """Runs commands with visible progress: their output is streamed, prefixed, and timed."""

    def __init__(self, out: str):
        self.out = out
        self.start = time.time()
        self.log = open(os.path.join(out, "demo.log"), "a")

    def say(self, message: str) -> None:
        line = f"[demo {format_duration(time.time() - self.start)}] {message}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run(self, label: str, args: list[str], echo=lambda line: True) -> str:
        self.say(f"{label}: {' '.join(os.path.relpath(a, REPO) if a.startswith(REPO) else a for a in args)}")
        env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=REPO)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            self.log.write(line)
            if echo(line):
                print(f"  {label} | {line.rstrip()}", flush=True)
        if proc.wait():
            tail = "".join(lines[-30:])
            raise RuntimeError(f"{label} failed (exit code {proc.returncode}):\n{tail}")
        return "".join(lines)


def _tool(name: str) -> str:
    return os.path.join(REPO, "tools", name)


def _metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def _fresh(path: str) -> str:
    """`path`, with whatever an earlier run left there (a file or a folder) removed: a report read
    after a step is this run's, and a tool that refuses an existing output gets none."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    return path


def _read_json(path: str, label: str) -> dict:
    if not os.path.exists(path):
        raise RuntimeError(f"{label}: the command exited 0 but wrote no {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _shape(stage: Stage, seq: int) -> FLMConfig:
    """The stage's architecture (its vocabulary is the tokenizer's, padded, set by the trainer)."""
    return get_preset(stage.preset).replace(seq_length=seq)


def prepare_data(cfg: RecipeConfig, run: Runner) -> dict:
    data = os.path.join(cfg.out, "data")
    corpus = os.path.join(data, "corpus")
    run.run("corpus", [_tool("build_demo_corpus.py"), "--out", corpus])
    tokenizer = os.path.join(data, f"bpe{cfg.vocab_size}.json")
    run.run("tokenizer", [_tool("train_tokenizer.py"), "--input", os.path.join(corpus, "en_train.jsonl"),
                          os.path.join(corpus, "zh_train.jsonl"), "--vocab-size", str(cfg.vocab_size),
                          "--output", tokenizer])
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer]
    for name in ("en", "zh", "teacher"):
        extra = ["--teacher-signal"] if name == "teacher" else []
        run.run(f"preprocess {name}", [_tool("preprocess_data.py"), "--input",
                                       os.path.join(corpus, f"{name}_train.jsonl"), "--output-prefix",
                                       os.path.join(data, name), "--append-eod", "--workers", "2", *tok, *extra],
                echo=lambda line: line.startswith(("done", "wrote")))
    return {"tokenizer": tokenizer, "tok": tok, "corpus": corpus, "en": os.path.join(data, "en_text_document"),
            "zh": os.path.join(data, "zh_text_document"), "teacher": os.path.join(data, "teacher"),
            "cache": os.path.join(data, "cache")}


def train_stage(cfg: RecipeConfig, run: Runner, data: dict, stage: Stage, *, load: str | None, label: str,
                teacher: bool = True) -> dict:
    model = _shape(stage, cfg.seq_length)
    out = os.path.join(cfg.out, label)
    metrics = _fresh(os.path.join(out, "metrics.jsonl"))
    # A stage of a new demo run starts over (the trainer refuses to save below iterations an earlier run left there).
    _fresh(os.path.join(out, "ckpt"))
    args = [os.path.join(REPO, "pretrain_flm.py"), "--model-preset", stage.preset, "--seq-length", str(cfg.seq_length),
            *data["tok"], "--data-path", "0.535", data["en"], "0.465", data["zh"], "--split", "98,2,0",
            "--data-cache-path", data["cache"], "--micro-batch-size", str(cfg.micro_batch_size),
            "--global-batch-size", str(cfg.global_batch_size), "--train-iters", str(stage.steps),
            "--lr", str(stage.lr), "--min-lr", str(stage.min_lr), "--lr-warmup-iters", str(stage.warmup),
            "--log-interval", "10", "--eval-interval", str(cfg.eval_interval), "--eval-iters", str(cfg.eval_iters),
            "--save", os.path.join(out, "ckpt"), "--tensorboard-dir", os.path.join(cfg.out, "tensorboard", label),
            "--metrics-jsonl", metrics, "--seed", str(cfg.seed)]
    if teacher:
        args += ["--teacher-data-path", data["teacher"], "--teacher-fraction", str(cfg.teacher_fraction)]
    if load:
        args += ["--load", load, "--start-new-stage", "--growth-ramp-steps", str(cfg.growth_ramp_steps)]
    started = time.time()
    run.run(label, args, echo=lambda line: line.startswith(("step", "loaded", "growth", "saved", "FLM")))
    rows = _metrics(metrics)
    train = [r for r in rows if "train/loss" in r]
    valid = [r for r in rows if "valid/loss" in r]
    tokens = stage.steps * cfg.global_batch_size * cfg.seq_length
    from flm_ext.checkpoint import open_checkpoint

    trained = open_checkpoint(os.path.join(out, "ckpt"), verify=False).config  # vocab as padded
    return {"name": label, "parameters": num_parameters(trained), "flops": tokens * flops_per_token(trained), "shape": {"num_layers": model.num_layers, "hidden_size": model.hidden_size,
                                     "num_attention_heads": model.num_attention_heads,
                                     "ffn_hidden_size": model.ffn_hidden_size},
            "teacher_data": teacher, "steps": stage.steps, "tokens": tokens, "wall_s": time.time() - started,
            "final_train_loss": train[-1]["train/loss"], "final_valid_loss": valid[-1]["valid/loss"],
            "checkpoint": os.path.join(out, "ckpt"), "metrics": metrics}


def grow(cfg: RecipeConfig, run: Runner, old: str, new: str, target: FLMConfig, label: str) -> dict:
    _fresh(new)
    started = time.time()
    report = _fresh(f"{new}_verify.json")
    run.run(label, [_tool("grow_checkpoint.py"), "--load", old, "--save", new,
                    "--hidden-size", str(target.hidden_size), "--ffn-hidden-size", str(target.ffn_hidden_size),
                    "--num-attention-heads", str(target.num_attention_heads),
                    "--num-layers", str(target.num_layers), "--depth-init", "stack",
                    "--growth-ramp-steps", str(cfg.growth_ramp_steps), "--verify", "--verify-json", report])
    wall = time.time() - started
    verify = _read_json(report, label)
    return {"name": label, "to": dataclasses.asdict(target), "max_abs_logit_diff": verify["max_abs_logit_diff"],
            "loss_jump": verify.get("loss_jump"), "wall_s": wall, "checkpoint": new}


def evaluate(cfg: RecipeConfig, run: Runner, data: dict, checkpoint: str, label: str, iq: bool = False) -> dict:
    """Perplexity and teacher-signal accuracy; with `iq`, also a small IQ suite (cfg.iq_items per sub-test)."""
    corpus = data["corpus"]
    path = os.path.join(cfg.out, f"eval_{label}.json")
    tasks = ["--tasks", "perplexity,teacher,iq", "--iq-n", str(cfg.iq_items),
             "--markdown", os.path.join(cfg.out, f"eval_{label}.md")] if iq else []
    run.run(f"evaluate {label}", [_tool("evaluate.py"), "--load", checkpoint, *data["tok"], "--valid-data",
                                  f"en={corpus}/en_valid.jsonl", f"zh={corpus}/zh_valid.jsonl",
                                  "--teacher-data", f"{corpus}/teacher_valid.jsonl", "--max-teacher-samples",
                                  str(cfg.max_teacher_samples), *tasks, "--output", path], echo=lambda line: False)
    with open(path) as f:
        return json.load(f)


EXPORT_PROMPTS = {"en": "In the beginning", "zh": "起初，"}


def export_final(cfg: RecipeConfig, run: Runner, data: dict, checkpoint: str) -> dict:
    """Export the final model to transformers (--verify: its logits against the training model's),
    then continue an English and a Chinese prompt greedily with the export (AutoModelForCausalLM)."""
    folder = os.path.join(cfg.out, "export")
    _fresh(folder)
    report = _fresh(f"{folder}_verify.json")
    run.run("export", [_tool("export_hf.py"), "--load", checkpoint, "--save", folder, *data["tok"],
                       "--verify", "--verify-json", report])
    verify = _read_json(report, "export")
    generated = _fresh(os.path.join(cfg.out, "greedy.json"))
    run.run("generate", [_tool("generate.py"), "--load", folder, "--greedy", "--max-new-tokens", "32",
                         "--device", "cpu", *sum((["--prompt", p] for p in EXPORT_PROMPTS.values()), []),
                         "--output", generated])
    rows = _read_json(generated, "generate")["generations"]  # one per prompt, in order
    greedy = {lang: row["prompt"] + row["continuation"] for lang, row in zip(EXPORT_PROMPTS, rows)}
    return {"folder": folder, "max_abs_logit_diff": verify["max_abs_logit_diff"], "greedy": greedy}


def plot(summary: dict, path: str) -> None:
    """Training and validation loss over cumulative FLOPs, growth points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    offset = 0.0
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for i, stage in enumerate(summary["stages"]):
        rows = _metrics(stage["metrics"])
        per_step = stage["flops"] / stage["steps"]
        train = [(offset + r["iteration"] * per_step, r["train/loss"]) for r in rows if "train/loss" in r]
        valid = [(offset + r["iteration"] * per_step, r["valid/loss"]) for r in rows if "valid/loss" in r]
        ax.plot(*zip(*train), color=colors[i % 3], alpha=0.6, label=f"{stage['name']} train")
        ax.plot(*zip(*valid), "o-", color=colors[i % 3], label=f"{stage['name']} validation")
        offset += stage["flops"]
        if i < len(summary["stages"]) - 1:
            growth = summary["growth"][i]
            ax.axvline(offset, color="gray", linestyle="--")
            ax.text(offset, ax.get_ylim()[1], f" {growth['name']}\n diff {growth['max_abs_logit_diff']:.1e}",
                    va="top", fontsize=8)
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("FLM recipe in miniature: 3 stages joined by width and depth growth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_recipe(cfg: RecipeConfig) -> dict:
    cfg = dataclasses.replace(cfg, out=os.path.abspath(cfg.out))  # summary.json paths work from anywhere
    os.makedirs(cfg.out, exist_ok=True)
    run = Runner(cfg.out)
    run.say(f"FLM recipe in miniature -> {cfg.out}")
    data = prepare_data(cfg, run)
    models = [_shape(s, cfg.seq_length) for s in cfg.stages]
    stages, growth = [], []
    load = None
    for i, stage in enumerate(cfg.stages):
        if i > 0:
            target = models[i]
            grown = os.path.join(cfg.out, f"{stage.name}_grown")
            kind = "width" if target.hidden_size != models[i - 1].hidden_size else "depth"
            growth.append(grow(cfg, run, stages[-1]["checkpoint"], grown, target, f"grow {kind}"))
            load = grown
        result = train_stage(cfg, run, data, stage, load=load, label=stage.name)
        stages.append(result)
    control = None
    if cfg.control_run:
        control = train_stage(cfg, run, data, cfg.stages[0], load=None, label="stage1_no_teacher", teacher=False)
    evaluation = {"final": evaluate(cfg, run, data, stages[-1]["checkpoint"], "final", iq=cfg.iq_items > 0),
                  "stage1": evaluate(cfg, run, data, stages[0]["checkpoint"], "stage1")}
    if control:
        evaluation["stage1_no_teacher"] = evaluate(cfg, run, data, control["checkpoint"], "stage1_no_teacher")
    if control:
        control["parameters"], control["flops"] = stages[0]["parameters"], stages[0]["flops"]
    export = export_final(cfg, run, data, stages[-1]["checkpoint"])
    # The teacher signal's effect side by side: held-out review accuracy with and without teacher data.
    teacher_signal = {key: result["zero_shot"].get("reviews") for key, result in evaluation.items()}
    summary = {"stages": stages, "growth": growth, "control_no_teacher": control, "evaluation": evaluation,
               "export": export,
               "teacher_signal_held_out_reviews": teacher_signal,
               "data": {k: v for k, v in data.items() if k != "tok"},
               "total_flops": sum(s["flops"] for s in stages), "wall_s": time.time() - run.start}
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    plot(summary, os.path.join(cfg.out, "loss.png"))
    run.say(report(summary))
    return summary


def report(summary: dict) -> str:
    lines = ["", "stage                 shape            params    steps  valid loss"]
    for s in summary["stages"]:
        shape = f"{s['shape']['num_layers']} x {s['shape']['hidden_size']}, {s['shape']['num_attention_heads']}h"
        lines.append(f"{s['name']:<20} {shape:<16} {s['parameters'] / 1e6:6.2f}M  {s['steps']:6d}  "
                     f"{s['final_valid_loss']:.4f}")
    for g in summary["growth"]:
        lines.append(f"{g['name']}: max abs logit diff {g['max_abs_logit_diff']:.2e}")
    ev = summary["evaluation"]
    for key in ("final", "stage1", "stage1_no_teacher"):
        if key in ev:
            reviews = ev[key].get("zero_shot", {}).get("reviews")
            score = ("n/a" if reviews is None else
                     f"accuracy {reviews['accuracy']:.1%} (majority baseline {reviews['majority_baseline']:.1%}), "
                     f"balanced {reviews['balanced_accuracy']:.1%} (chance 50%)")
            lines.append(f"held-out reviews, {key}: {score}; perplexity en "
                         f"{ev[key]['languages']['en']['perplexity']:.1f}, zh {ev[key]['languages']['zh']['perplexity']:.1f}")
    families = ev.get("final", {}).get("iq", {}).get("families", {})
    if families:
        lines.append("IQ suite, final model (score vs random baseline; a model this small is expected at chance):")
        lines += [f"  {name:<20} {r['score']:6.1%} vs {r['random_baseline']:6.1%}" for name, r in families.items()]
    export = summary.get("export")
    if export:
        lines.append(f"transformers export {export['folder']}: max abs logit diff {export['max_abs_logit_diff']:.2e} "
                     f"vs the training model; greedy continuations:")
        lines += [f"  {lang}: {text!r}" for lang, text in export["greedy"].items()]
    lines.append(f"wrote summary.json, loss.png, tensorboard/ in {format_duration(summary['wall_s'])}")
    return "\n".join(lines)
