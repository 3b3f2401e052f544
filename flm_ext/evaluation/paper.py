"""The paper's published figures (FLM-101B, `docs/FLM.md`), placed beside our scores in reports.

IQ-style tests: the paper's own items, which are not public; ours are generated to the same
descriptions, so the figures are a reference for scale, not a like-for-like comparison.
Knowledge benchmarks: the Open LLM Leaderboard settings the paper used (ARC-Challenge 25-shot
acc_norm, HellaSwag 10-shot acc_norm, MMLU 5-shot acc, TruthfulQA 0-shot mc2).
"""

# FLM-101B, GPT-3, GLM-130B (percent); None where the paper gives no figure.
IQ = {
    "superglue_iq": (46.76, 47.60, 48.19),
    "clue_iq": (42.07, None, 39.96),
    "counting": (69.59, 82.43, 60.81),
    "replace_lowercase": (64.00, 80.67, 69.67),
    "replace_word": (95.67, 95.00, 84.00),
    "rule_understanding": (76.42, 86.03, 71.49),
    "head_tail": (52.0, 61.0, 38.0),
    "full_repeating": (79.0, 92.0, 70.0),
    "head_slicing": (63.0, 57.0, 51.0),
    "pattern_mining": (64.67, 70.00, 53.00),
    "multikey": (89.00, 92.67, 77.67),
    "single_fact": (59.00, 78.33, 56.33),
    "two_facts": (32.33, 39.33, 26.67),
    "anti_interference": (60.11, 70.11, 53.56),
}
IQ_MODELS = ("FLM-101B", "GPT-3", "GLM-130B")

# lm-eval task name -> (FLM-101B figure, the metric lm-eval reports for it, few-shot count)
KNOWLEDGE = {
    "arc_challenge": (39.76, "acc_norm", 25),
    "hellaswag": (66.23, "acc_norm", 10),
    "mmlu": (28.30, "acc", 5),
    "truthfulqa_mc2": (41.47, "acc", 0),
}
# C-Eval: the paper reports FLM-16B 27.0 and eFLM-16B (teacher signal) 46.1, not FLM-101B.
CEVAL = {"ceval-valid": {"FLM-16B": 27.0, "eFLM-16B": 46.1}}


def figure(key: str) -> str:
    """The FLM-101B figure for a task or IQ column as text ("-" when the paper has none)."""
    if key in IQ:
        return f"{IQ[key][0]:.2f}"
    if key in KNOWLEDGE:
        return f"{KNOWLEDGE[key][0]:.2f}"
    if key in CEVAL:
        return ", ".join(f"{v:.1f} ({k})" for k, v in CEVAL[key].items())
    return "-"
