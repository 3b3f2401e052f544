"""Zero-shot teacher-signal answers computed apart from flm_ext.evaluation: the exported model under
transformers, its own tokenizer, and docs/FLM.md's prompt (`text + "\\n" + proposition`, then each
label emoji). The end-to-end tests check the reported accuracy against these answers."""
from __future__ import annotations

import json

import torch


def margins(folder: str, teacher_jsonl: str, samples: int) -> list[tuple[bool, float]]:
    """(label, log P(true emoji) - log P(false emoji)) for the first `samples` held-out lines."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval().float()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    window = model.config.max_position_embeddings
    emoji = [tok.encode(e, add_special_tokens=False) for e in ("\N{SMILING FACE WITH HORNS}", "\N{POUTING FACE}")]
    out = []
    with open(teacher_jsonl, encoding="utf-8") as f:
        lines = f.read().splitlines()[:samples]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: 20x faster than 2 threads fighting on 2 loaded cores
    try:
        for line in lines:
            out.append(_margin(model, tok, window, emoji, json.loads(line)))
    finally:
        torch.set_num_threads(threads)
    return out


@torch.no_grad()
def _margin(model, tok, window: int, emoji: list[list[int]], sample: dict) -> tuple[bool, float]:
    prompt = tok.encode(sample["text"] + "\n" + sample["proposition"], add_special_tokens=False)
    scores = []
    for cand in emoji:
        ids = (prompt + cand)[-window:]
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
        start = len(ids) - len(cand)
        scores.append(sum(logp[start - 1 + i, t].item() for i, t in enumerate(cand)))
    return bool(sample["label"]), scores[0] - scores[1]


def check_accuracy(reported: dict, answers: list[tuple[bool, float]], tie: float = 1e-4) -> None:
    """The reported accuracy counts the same right answers, up to samples whose two scores are within
    `tie` (float32 training model vs this export may order a near-tie either way)."""
    right = sum((margin > 0) == label for label, margin in answers)
    near_ties = sum(abs(margin) < tie for _, margin in answers)
    assert reported["samples"] == len(answers)
    assert abs(reported["accuracy"] * len(answers) - right) <= near_ties, (reported, right, near_ties)
    labels = [label for label, _ in answers]
    assert reported["majority_baseline"] == max(labels.count(True), labels.count(False)) / len(labels)
    # per label too: an answer rule read backwards can keep the accuracy (30 of 60 stays 30) but not this
    recalls = [sum(margin > 0 if want else margin <= 0 for label, margin in answers if label == want) /
               labels.count(want) for want in (True, False) if want in labels]
    slack = near_ties / min(labels.count(True), labels.count(False)) if len(recalls) == 2 else near_ties
    assert abs(reported["balanced_accuracy"] - sum(recalls) / len(recalls)) <= slack + 1e-12, (reported, recalls)
