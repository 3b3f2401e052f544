"""Evaluate a checkpoint: held-out perplexity per language and FreeLM-style zero-shot accuracy.

Perplexity: each held-out jsonl file's documents (each followed by the end-of-document token, as
in training) are concatenated and cut into windows of the model's sequence length; the loss is
the mean next-token NLL over every predicted token.

Zero-shot accuracy (FreeLM's teacher signal read as a classifier): for each held-out
`{"text", "proposition", "label"}` line the prompt is `text + "\\n" + proposition`, tokenized
exactly as preprocessing does, and the model's log-probabilities of the two label token
sequences (the true and the false emoji) after it are compared; the higher one is the answer.
Accuracy is reported per task family (the proposition's wording with book or sentiment names
stripped) and overall, next to what a constant answer scores: the majority baseline (the share of
the commoner label) and balanced accuracy (the mean recall of true and false samples, 50% for any
constant answer), since held-out labels are rarely split exactly in half.

Runs on one process (CPU or one GPU), whatever TP/PP the checkpoint was saved at.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict

import torch
import torch.nn.functional as F

from flm_ext.config import FLMConfig, ParallelConfig, describe
from flm_ext.data import special_tokens


def load_model(path: str, iteration: int | None = None):
    """(model, FLMConfig, CheckpointRecord) from a verified checkpoint (any saved TP/PP), built at
    TP=PP=1 in this process, growth masks applied at the checkpoint's iteration."""
    from flm_ext.checkpoint import open_checkpoint
    from flm_ext.checkpoint.model_state import load_model_weights
    from flm_ext.growth import GrowthState, attach_growth
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.runtime import device, init_single_process

    ckpt = open_checkpoint(path, iteration)
    init_single_process(seed=0)
    chunks = build_model_chunks(ckpt.config, ParallelConfig())
    load_model_weights(ckpt.folder, chunks)
    state, lam = GrowthState.at_checkpoint(ckpt)
    if state is not None:
        attach_growth(chunks, state, lam)
    model = chunks[0].to(device()).eval()
    return model, ckpt.config, ckpt.record


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return model(ids, positions, None).float()


def read_stream(tokenizer, path: str, max_tokens: int) -> list[int]:
    """A held-out jsonl file's `text` documents as one token stream, each followed by the
    end-of-document token (as in training), read until at least `max_tokens` tokens."""
    stream: list[int] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            stream += tokenizer.tokenize(json.loads(line)["text"]) + [tokenizer.eod]
            if len(stream) >= max_tokens:
                break
    return stream


class TooFewTokens(ValueError):
    """A held-out file holds less than one window; the message names the file."""


def windows(stream: list[int], length: int, path: str) -> torch.Tensor:
    """[count, length + 1]: consecutive, non-overlapping windows (inputs plus the next token)."""
    count = len(stream) // (length + 1)
    if count == 0:
        raise TooFewTokens(f"{path}: only {len(stream)} tokens, fewer than one window of {length + 1}")
    return torch.tensor(stream[: count * (length + 1)]).view(count, length + 1)


@torch.no_grad()
def token_nll(logits_fn, data: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """[count, length] next-token negative log-likelihoods (float64) of each window in `data`,
    where `logits_fn(ids [b, s]) -> [b, s, vocab]`."""
    rows = []
    for start in range(0, data.shape[0], batch_size):
        batch = data[start:start + batch_size]
        logits = logits_fn(batch[:, :-1]).float()
        target = batch[:, 1:].to(logits.device)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        rows.append(nll.view(target.shape).double().cpu())
    return torch.cat(rows)


def model_logits_fn(model):
    """`logits_fn` of a training-side model (megatron, TP=1)."""
    device = next(model.parameters()).device
    return lambda ids: _logits(model, ids.to(device))


@torch.no_grad()
def language_loss(model, config: FLMConfig, tokenizer, path: str, max_tokens: int = 200_000,
                  batch_size: int = 8) -> dict:
    """Mean next-token loss and perplexity over a held-out jsonl file's `text` documents, in windows
    of the training length."""
    data = windows(read_stream(tokenizer, path, max_tokens), config.seq_length, path)
    nll = token_nll(model_logits_fn(model), data, batch_size)
    loss = nll.mean().item()
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": nll.numel()}


def task_family(proposition: str) -> str:
    """Group propositions by wording, ignoring the varying part (book names, polarity words)."""
    if "评论" in proposition:
        return "reviews"
    return re.sub(r"(book of|from) .*", r"\1 ...", proposition)


@torch.no_grad()
def label_log_probs(model, config: FLMConfig, prompt: list[int], candidates: list[list[int]]) -> list[float]:
    """log P(candidate | prompt) for each candidate token sequence; candidates of equal length (the
    two label emoji) share one batched forward pass."""
    device = next(model.parameters()).device
    sequences = [(prompt + cand)[-config.seq_length:] for cand in candidates]
    if len({len(ids) for ids in sequences}) == 1:
        logps = F.log_softmax(_logits(model, torch.tensor(sequences, device=device)), dim=-1)
    else:
        logps = [F.log_softmax(_logits(model, torch.tensor([ids], device=device))[0], dim=-1) for ids in sequences]
    scores = []
    for ids, cand, logp in zip(sequences, candidates, logps):
        start = len(ids) - len(cand)
        scores.append(sum(logp[start - 1 + i, tok].item() for i, tok in enumerate(cand)))
    return scores


def _scores(right: dict, seen: dict) -> dict:
    """Accuracy, and what a constant answer would score: the majority baseline, and balanced
    accuracy (mean recall of the true and the false samples: 0.5 for any constant answer)."""
    n = sum(seen.values())
    recalls = [right[label] / seen[label] for label in (True, False) if seen[label]]
    return {"accuracy": sum(right.values()) / n, "samples": n, "true_share": seen[True] / n,
            "majority_baseline": max(seen[True], seen[False]) / n,
            "balanced_accuracy": sum(recalls) / len(recalls)}


def zero_shot_accuracy(model, config: FLMConfig, tokenizer, path: str, max_samples: int = 1000) -> dict:
    """Accuracy of choosing the right label emoji, per task family and overall."""
    right: dict[str, dict] = defaultdict(lambda: {True: 0, False: 0})
    seen: dict[str, dict] = defaultdict(lambda: {True: 0, False: 0})
    candidates = [tokenizer.label_ids(True), tokenizer.label_ids(False)]
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if n >= max_samples:
                break
            sample = json.loads(line)
            label = bool(sample["label"])
            prompt = tokenizer.tokenize(sample["text"] + special_tokens.PROPOSITION_SEPARATOR + sample["proposition"])
            true_score, false_score = label_log_probs(model, config, prompt, candidates)
            for family in (task_family(sample["proposition"]), "all"):
                seen[family][label] += 1
                right[family][label] += int((true_score > false_score) == label)
    return {family: _scores(right[family], seen[family]) for family in sorted(seen)}


def evaluate(path: str, tokenizer, language_files: dict[str, str], teacher_file: str | None,
             max_teacher_samples: int = 1000) -> dict:
    from flm_ext.checkpoint import check_tokenizer

    model, config, record = load_model(path)
    check_tokenizer(record, tokenizer, path)
    result = {"checkpoint": path, "iteration": record.iteration, "model": describe(config),
              "languages": {lang: language_loss(model, config, tokenizer, file)
                            for lang, file in language_files.items()}}
    if teacher_file:
        result["zero_shot"] = zero_shot_accuracy(model, config, tokenizer, teacher_file, max_teacher_samples)
    return result
