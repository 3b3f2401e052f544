"""Checkpoint evaluation: our own tasks, an lm-eval backend and the IQ-style suite.

- `core`: held-out perplexity per language and FreeLM teacher-signal zero-shot accuracy, and
  `load_model` (a TP=1 model from a checkpoint saved at any TP/PP, growth masks applied).
- `backend`: the lm-eval model `flm` (log-likelihoods on the training code path, batched KV-cache
  generation); `lm_eval_cli`: lm-eval's CLI with it registered.
- `iq`: offline, seeded generators and independent solvers for the paper's IQ-style tests.
- `runner`: what `tools/evaluate.py` runs: our tasks and any lm-eval task, one results table;
  `paper`: the paper's figures placed beside ours.

- `tasks`: the registry of our tasks (`tools/evaluate.py --tasks`); one module per task.

The names below are imported by the recipe, the tests and the benchmarks, lazily: reading the task
registry (the CLI's checks) needs no torch. lm-eval is imported only by `backend`, `runner`'s lm-eval
path and `lm_eval_cli`, so training-side users never pay for it.
"""
__all__ = ["evaluate", "label_log_probs", "language_loss", "load_model", "task_family", "zero_shot_accuracy"]


def __getattr__(name: str):
    if name in __all__:
        from flm_ext.evaluation import core

        return getattr(core, name)
    raise AttributeError(f"module 'flm_ext.evaluation' has no attribute {name!r}")
