"""Zero-shot teacher-signal answers computed apart from flm_ext.evaluation: the exported model under
transformers, its own tokenizer, and docs/FLM.md's prompt (`text + "\\n" + proposition`, then each
label emoji). The end-to-end tests check the reported accuracy against these answers."""
from __future__ import annotations

import json

import torch


def margins(folder: str, teacher_jsonl: str, samples: int, batch: int = 32) -> list[tuple[bool, float]]:
    """(label, log P(true emoji) - log P(false emoji)) for the first `samples` held-out lines."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval().float()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    window = model.config.max_position_embeddings
    emoji = [tok.encode(e, add_special_tokens=False) for e in ("\N{SMILING FACE WITH HORNS}", "\N{POUTING FACE}")]
    with open(teacher_jsonl, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f.read().splitlines()[:samples]]
    # log P(cand | prompt) needs the logits of prompt + cand[:-1] only: one forward serves both labels
    # where they differ only in their last token (byte-level emoji share their leading bytes)
    inputs: dict[tuple[int, ...], list[float] | None] = {}
    wanted = []
    for row in rows:
        prompt = tok.encode(row["text"] + "\n" + row["proposition"], add_special_tokens=False)
        for cand in emoji:
            ids = (prompt + cand)[-window:]
            wanted.append((tuple(ids[:-1]), cand))
            inputs[tuple(ids[:-1])] = None
    order = sorted(inputs, key=len)  # batches of similar length
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small forwards: far faster than 2 threads fighting on 2 loaded cores
    try:
        for at in range(0, len(order), batch):
            chunk = order[at:at + batch]
            inputs.update(zip(chunk, _logits(model, chunk)))
    finally:
        torch.set_num_threads(threads)
    scores = []
    for ids, cand in wanted:
        logp = torch.log_softmax(inputs[ids][len(ids) - len(cand):].double(), dim=-1)  # predicting cand
        scores.append(sum(logp[i, t].item() for i, t in enumerate(cand)))
    return [(bool(row["label"]), scores[2 * n] - scores[2 * n + 1]) for n, row in enumerate(rows)]


@torch.no_grad()
def _logits(model, seqs: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Each sequence's logits from one forward of them all, padded on the right (a causal model's
    earlier positions never see the padding)."""
    width = max(len(ids) for ids in seqs)
    logits = model(torch.tensor([list(ids) + [0] * (width - len(ids)) for ids in seqs])).logits
    return [logits[row, :len(ids)] for row, ids in enumerate(seqs)]


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
