"""Scripted lm-eval models for checking an IQ suite end to end through lm-eval's own pipeline.

- `iq-oracle` answers every request with the sub-test's solver (reading only the prompt lm-eval
  built, plus a review's source label): it must score 100%, which checks the prompts, targets,
  choices, filters and metrics of the written YAML, not only the items.
- `iq-constant` gives every choice the same log-likelihood (lm-eval then picks the first choice)
  and a fixed text for generation: it must score the sub-test's random baseline.

    python -m flm_ext.evaluation.lm_eval_cli --model iq-oracle --tasks iq --include_path DIR
"""
from __future__ import annotations

import lm_eval.models  # noqa: F401  (fills lm-eval's registry before ours is added)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from flm_ext.evaluation.iq.suite import BY_NAME


def _solve(instance) -> str:
    test = BY_NAME[instance.task_name]
    context = instance.args[0]
    return test.solve(context, test.lang or "en", instance.doc.get("meta") or {})


@register_model("iq-oracle")
class OracleLM(LM):
    def __init__(self, **kwargs):
        super().__init__()

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return [(0.0, True) if r.args[1].strip() == _solve(r) else (-10.0, False) for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the IQ suite has no rolling log-likelihood tasks")

    def generate_until(self, requests, disable_tqdm: bool = False):
        return [" " + _solve(r) + "\n" for r in requests]


@register_model("iq-constant")
class ConstantLM(LM):
    """answer=TEXT: the text every generation request gets."""

    def __init__(self, answer: str = "", **kwargs):
        super().__init__()
        self.answer = str(answer)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return [(0.0, False) for _ in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return [0.0 for _ in requests]

    def generate_until(self, requests, disable_tqdm: bool = False):
        return [self.answer for _ in requests]
