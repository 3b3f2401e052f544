"""Perplexity beyond the training length: per language, at several window lengths, by position.

For each length L the held-out token stream (documents joined by the end-of-document token, as
in training) is cut into consecutive windows of L inputs; every window is one forward pass from
position 0, and the next-token loss is kept per position. The report per (language, L): the mean
loss and perplexity over all positions, and per position bucket (positions [0, l), [l, 2l), ...
for training length l), which shows where in a long window the loss goes up: a model that
extrapolates keeps the later buckets at least as good as the first.

`parse_lengths` reads `--lengths` (`1x,2x,4x,8x`: multiples of the training length, or absolute
token counts such as `512`). The same stream serves every length, so longer lengths simply use
fewer, longer windows over the same text. Works with any `logits_fn(ids [b, s]) -> [b, s, vocab]`:
the training model (`core.model_logits_fn`) or the transformers export (`export_logits_fn`).
"""
from __future__ import annotations

import math

MAX_BUCKETS = 16


def parse_lengths(spec: str) -> list[tuple[str, int | float]]:
    """'1x,2x,512' -> [('1x', 1.0), ('2x', 2.0), ('512', 512)]: multiples stay floats until the
    training length is known (`resolve`). Raises ValueError naming the bad item."""
    items = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            value = float(item[:-1]) if item.endswith("x") else int(item)
        except ValueError:
            raise ValueError(f"--lengths {item!r}: expected a multiple of the training length such as 2x, "
                             f"or a token count such as 512") from None
        if not value > 0:
            raise ValueError(f"--lengths {item!r} must be positive")
        items.append((item, value if item.endswith("x") else int(value)))
    if not items:
        raise ValueError("--lengths is empty: give e.g. 1x,2x,4x,8x")
    return items


def resolve(lengths: list[tuple[str, int | float]], training_length: int) -> list[int]:
    """Token counts, in the given order, duplicates dropped."""
    out: list[int] = []
    for item, value in lengths:
        tokens = int(round(value * training_length)) if item.endswith("x") else int(value)
        if tokens < 1:
            raise ValueError(f"--lengths {item}: {tokens} tokens at training length {training_length}")
        if tokens not in out:
            out.append(tokens)
    return out


def bucket_width(training_length: int, longest: int) -> int:
    """The training length, or a multiple of it when that would give more than MAX_BUCKETS buckets."""
    return training_length * max(1, math.ceil(longest / (training_length * MAX_BUCKETS)))


def summarize(nll, width: int) -> dict:
    """Loss, perplexity and token count overall and per position bucket of `width` positions."""
    length = nll.shape[1]
    loss = nll.mean().item()
    buckets = []
    for start in range(0, length, width):
        part = nll[:, start:start + width]
        b_loss = part.mean().item()
        buckets.append({"start": start, "end": start + part.shape[1], "loss": b_loss,
                        "perplexity": math.exp(b_loss), "tokens": part.numel()})
    return {"length": length, "loss": loss, "perplexity": math.exp(loss), "tokens": nll.numel(),
            "windows": nll.shape[0], "buckets": buckets}


def perplexity_by_length(logits_fn, tokenizer, files: dict[str, str], lengths: list[int], training_length: int, *,
                         max_tokens: int = 200_000, batch_size: int = 8, progress=None) -> dict:
    """{lang: {str(L): summarize(...)}} plus the settings, for every language file and length."""
    from flm_ext.evaluation.core import read_stream, token_nll, windows

    width = bucket_width(training_length, max(lengths))
    out = {"training_length": training_length, "lengths": lengths, "bucket_width": width, "languages": {}}
    for lang, path in files.items():
        stream = read_stream(tokenizer, path, max_tokens)
        per_length = {}
        for length in lengths:
            data = windows(stream, length, path)
            # fewer sequences per batch as windows grow: about batch_size x training_length tokens each
            rows = max(1, batch_size * training_length // length)
            per_length[str(length)] = summarize(token_nll(logits_fn, data, rows), width)
            if progress is not None:
                progress(f"{lang} at {length} tokens: perplexity {per_length[str(length)]['perplexity']:.2f}")
        out["languages"][lang] = per_length
    return out


def markdown(result: dict, title: str = "") -> str:
    """One row per (language, length): overall perplexity, then one column per position bucket."""
    width, train = result["bucket_width"], result["training_length"]
    count = math.ceil(max(result["lengths"]) / width)
    heads = [f"{i * width}-{(i + 1) * width}" for i in range(count)]
    lines = ([f"{title}", ""] if title else []) + [
        "| language | length | x training | perplexity | " + " | ".join(f"positions {h}" for h in heads) + " |",
        "|---|---|---|---|" + "---|" * count]
    for lang, per_length in result["languages"].items():
        for key, r in per_length.items():
            cells = [f"{b['perplexity']:.2f}" for b in r["buckets"]] + ["-"] * (count - len(r["buckets"]))
            lines.append(f"| {lang} | {r['length']} | {r['length'] / train:g} | {r['perplexity']:.2f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def export_logits_fn(model):
    """`logits_fn` of a transformers FLMForCausalLM (one forward from position 0, no cache)."""
    import torch

    device = next(model.parameters()).device

    @torch.no_grad()
    def logits(ids):
        return model(input_ids=ids.to(device), use_cache=False).logits
    return logits
