"""What `tools/evaluate.py` runs: the registered tasks (flm_ext/evaluation/tasks: perplexity,
teacher, iq, ...) and any lm-eval task on one loaded model, one results dict and one markdown table
(score, random baseline, the paper's figure).

Each asked name goes to the registered task that answers it; every other name is handed to lm-eval
(arc_challenge, hellaswag, mmlu, truthfulqa_mc2, ceval-valid, ...). An lm-eval task whose data set
is not on this machine is reported in one line and skipped.
"""
from __future__ import annotations

import sys

from flm_ext.evaluation import harness, tasks
from flm_ext.evaluation.iq import suite


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def markdown_table(result: dict) -> str:
    """One table: our score, the random baseline and the paper's FLM-101B figure (percent); each
    registered task adds its rows (and any block below the table) from its part of `result`."""
    lines = ["| task | metric | ours | random baseline | paper FLM-101B | items |", "|---|---|---|---|---|---|"]
    for task in tasks.tasks():
        lines += task.rows(result)
    lines += harness.rows(result)
    for task in tasks.tasks():
        block = task.appendix(result) if task.appendix else None
        if block:
            lines += ["", block]
    return "\n".join(lines)


def run_tasks(ctx: tasks.Context, names: list[str], result: dict) -> dict:
    """Every asked registered task on the context's model, then the lm-eval names; the results go
    into `result`, which gets the markdown table under "table"."""
    ours, other = tasks.split(names)
    for task, asked in ours:
        result.update(task.run(ctx, asked))
        ctx.progress.update(1, task.name)
    if other:
        result["lm_eval"] = harness.run_lm_eval(ctx.lm(), other, list(ctx.include_paths), ctx.limit,
                                                ctx.num_fewshot, ctx.progress, say)
    result["table"] = markdown_table(result)
    return result


def _stages(names: list[str]) -> int:
    ours, other = tasks.split(names)
    return len(ours) + len(other) + 1


def evaluate_export(folder: str, tokenizer, names: list[str], *, valid_files: dict, lengths=None,
                    blockwise_block: int | None = None, max_eval_tokens: int = 200_000, batch_size: int = 8) -> dict:
    """The tasks that run on an exported transformers folder (perplexity, and by length): the export's
    own model code, loaded as users load it; `blockwise_block` sets its config's blockwise attention."""
    from flm_ext.evaluation.lengths import export_logits_fn
    from flm_ext.export.generation import load_hf_model
    from flm_ext.progress import Progress

    ours, other = tasks.split(names)
    if other or not all(task.on_export for task, _ in ours):
        allowed = ", ".join(t.name for t in tasks.tasks() if t.on_export)
        raise KeyError(f"--load {folder} is an exported model: only --tasks {allowed} runs on it here "
                       f"(lm-eval's own hf backend evaluates exports on other tasks)")
    progress = Progress(_stages(names), "evaluate", unit="stages", interval=0.0)
    model, _ = load_hf_model(folder)
    training_length = model.config.max_position_embeddings
    progress.update(1, f"loaded {folder}")
    result = {"export": folder}
    if blockwise_block is not None:
        model.config.blockwise_attention = True
        model.config.blockwise_block_size = blockwise_block or None
        result["blockwise_attention_block"] = blockwise_block or max(1, training_length // 2)
    ctx = tasks.Context(load=folder, tokenizer=tokenizer, logits_fn=export_logits_fn(model),
                        training_length=training_length, valid_files=valid_files, lengths=lengths,
                        max_eval_tokens=max_eval_tokens, batch_size=batch_size, say=say, progress=progress)
    return run_tasks(ctx, names, result)


def evaluate_checkpoint(load: str, tokenizer, names: list[str], *, valid_files: dict, teacher_file: str | None,
                        max_teacher_samples: int = 1000, iq_dir: str | None = None, iq_seed: int = 1234,
                        iq_n: int = 100, iq_langs=suite.LANGS, include_paths=(), limit: int | None = None,
                        num_fewshot: int | None = None, batch_size: int = 8, workdir: str | None = None,
                        lengths=None, blockwise_block: int | None = None, max_eval_tokens: int = 200_000) -> dict:
    """Load the checkpoint once and run every requested task on it; the results dict holds the
    markdown table under "table". `lengths` (parsed --lengths) adds perplexity by length and
    position bucket; `blockwise_block` (0: half the training length) switches blockwise causal
    attention on for every task."""
    from flm_ext.checkpoint import check_tokenizer
    from flm_ext.config import describe
    from flm_ext.evaluation.core import load_model, model_logits_fn
    from flm_ext.progress import Progress

    other = tasks.split(names)[1]
    if other:  # an unknown lm-eval task name stops here, before the checkpoint is loaded
        harness.task_manager(other, list(include_paths))
    progress = Progress(_stages(names), "evaluate", unit="stages", interval=0.0)
    model, config, record = load_model(load)
    check_tokenizer(record, tokenizer, load)
    progress.update(1, f"loaded {load} (iteration {record.iteration})")
    result = {"checkpoint": load, "iteration": record.iteration, "model": describe(config)}
    if blockwise_block is not None:
        from flm_ext.model.blockwise import default_block, set_blockwise_attention

        block = blockwise_block or default_block(config.seq_length)
        set_blockwise_attention(model, block)
        result["blockwise_attention_block"] = block
    ctx = tasks.Context(load=load, tokenizer=tokenizer, logits_fn=model_logits_fn(model),
                        training_length=config.seq_length, model=model, config=config, valid_files=valid_files,
                        teacher_file=teacher_file, max_teacher_samples=max_teacher_samples, lengths=lengths,
                        max_eval_tokens=max_eval_tokens, batch_size=batch_size, iq_dir=iq_dir, iq_seed=iq_seed,
                        iq_n=iq_n, iq_langs=tuple(iq_langs), include_paths=tuple(include_paths), limit=limit,
                        num_fewshot=num_fewshot, workdir=workdir, say=say, progress=progress)
    return run_tasks(ctx, names, result)
