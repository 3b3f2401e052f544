"""`teacher`: FreeLM's teacher signal read as a zero-shot classifier on held-out
{text, proposition, label} lines (--teacher-data): accuracy per task family and overall, beside the
majority baseline (flm_ext/evaluation/core.py: `zero_shot_accuracy`)."""
from __future__ import annotations

from flm_ext.evaluation.tasks import Context, Task, pct, register


def run(ctx: Context, names: list[str]) -> dict:
    from flm_ext.evaluation.core import zero_shot_accuracy

    return {"zero_shot": zero_shot_accuracy(ctx.model, ctx.config, ctx.tokenizer, ctx.teacher_file,
                                            ctx.max_teacher_samples)}


def rows(result: dict) -> list[str]:
    return [f"| teacher signal ({family}) | accuracy | {pct(r['accuracy'])} | {pct(r['majority_baseline'])} "
            f"(majority) | - | {r['samples']} |" for family, r in result.get("zero_shot", {}).items()]


register(Task("teacher", "model", "accuracy", "FreeLM teacher-signal zero-shot accuracy", run, rows,
              paper="docs/FLM.md 4, 6.3 (eFLM-16B: the teacher signal, scored on C-Eval)",
              needs=(("--teacher-data", "FILE.jsonl"),), default=True))
