"""`perplexity`: held-out perplexity per language of --valid-data, at the training length (and, with
--lengths, at longer windows and per position bucket: flm_ext/evaluation/lengths.py). Runs on a
training checkpoint and on an exported transformers folder alike."""
from __future__ import annotations

import math

from flm_ext.evaluation.tasks import Context, Task, register


def perplexity_results(logits_fn, tokenizer, valid_files: dict, training_length: int, lengths, max_tokens: int,
                       batch_size: int, say=None) -> dict:
    """{"languages": per-language perplexity at the training length} and, with `lengths`,
    {"perplexity_by_length": ...}; the training-length figures are read off the by-length run when
    it includes the training length."""
    out: dict = {}
    by_length: dict = {}
    if lengths:
        from flm_ext.evaluation.lengths import perplexity_by_length, resolve

        out["perplexity_by_length"] = perplexity_by_length(
            logits_fn, tokenizer, valid_files, resolve(lengths, training_length), training_length,
            max_tokens=max_tokens, batch_size=batch_size, progress=say)
        by_length = out["perplexity_by_length"]["languages"]
    languages = {}
    for lang, path in valid_files.items():
        at_train = by_length.get(lang, {}).get(str(training_length))
        if at_train is None:
            from flm_ext.evaluation.core import read_stream, token_nll, windows

            nll = token_nll(logits_fn, windows(read_stream(tokenizer, path, max_tokens), training_length, path),
                            batch_size)
            at_train = {"loss": nll.mean().item(), "perplexity": math.exp(nll.mean().item()), "tokens": nll.numel()}
        r = {k: at_train[k] for k in ("loss", "perplexity", "tokens")}
        languages[lang] = dict(r, vocab_size=tokenizer.vocab_size)
    out["languages"] = languages
    return out


def run(ctx: Context, names: list[str]) -> dict:
    return perplexity_results(ctx.logits_fn, ctx.tokenizer, ctx.valid_files, ctx.training_length, ctx.lengths,
                              ctx.max_eval_tokens, ctx.batch_size, ctx.say)


def rows(result: dict) -> list[str]:
    return [f"| perplexity ({lang}) | perplexity | {r['perplexity']:.2f} | {r.get('vocab_size', '-')} (uniform) | - "
            f"| {r['tokens']} tokens |" for lang, r in result.get("languages", {}).items()]


def by_length_table(result: dict) -> str | None:
    if "perplexity_by_length" not in result:
        return None
    from flm_ext.evaluation.lengths import markdown

    block = result.get("blockwise_attention_block")
    title = "Perplexity by length" + (f" (blockwise causal attention, block {block})" if block else "")
    return markdown(result["perplexity_by_length"], title)


register(Task("perplexity", "model", "perplexity", "held-out perplexity per language", run, rows,
              needs=(("--valid-data", "LANG=FILE.jsonl"),), default=True, on_export=True,
              appendix=by_length_table))
