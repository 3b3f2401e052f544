"""The lm-eval model `flm`: a torch_dist checkpoint (any saved TP/PP) evaluated directly, no export.

    lm_eval --model flm --model_args load=CKPT,tokenizer_type=HuggingFaceTokenizer,tokenizer_model=bpe.json

(run as `python -m flm_ext.evaluation.lm_eval_cli ...`: lm-eval reads no entry points, so
the module that registers `flm` must be imported before its CLI parses the model name.)

Log-likelihoods come from the training code path (`load_model`: megatron-core GPTModel + FLM
spec at TP=1), so comparing them with lm-eval's `hf` backend on the exported model checks the
export independently. Requests are scored as lm-eval's causal backends do: context + continuation
left-truncated to the model's sequence length + 1, the continuation's log-probabilities summed,
and `is_greedy` when every continuation token is the argmax. Batches are sorted by length and
right-padded (a causal model never looks right, so padding changes nothing it scores).

Generation (`generate_until`) is greedy, batched, through a small generator interface. With a
checkpoint path (`load=`) it is `CachedGenerator`: the transformers model of the export
(`flm_ext.export`) built in memory from the same checkpoint, decoding a left-padded batch over a
KV cache (one forward per new token for the whole batch). A model handed in directly uses
`Generator`, which re-runs each sequence at every step; the two give the same greedy tokens
(tests/test_evaluation_backend.py).
"""
from __future__ import annotations

import sys

import lm_eval.models  # noqa: F401  (fills lm-eval's registry first: it lazy-loads only when empty)
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from flm_ext.progress import Progress


def _forward(model, ids: torch.Tensor, vocab: int | None = None) -> torch.Tensor:
    """Logits over the tokenizer's `vocab` real tokens: the rows megatron pads the embedding with
    (to a multiple of 128 x TP) are no tokens, get no share of the probability and are never
    generated, as in the exported model, which drops them."""
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    logits = model(ids, positions, None).float()
    return logits[..., :vocab] if vocab else logits


class Generator:
    """Greedy continuations of a batch of prompts: `batch(prompts, max_new, stop) -> new ids per
    prompt`; `stop(new)` says when a row's decoded text already holds a stop string. This one
    re-runs each prompt's whole sequence at every step on the model it is given (no cache; the
    reference for `CachedGenerator`)."""

    def __init__(self, model, vocab: int | None = None):
        self.model, self.vocab = model, vocab

    @torch.no_grad()
    def batch(self, prompts: list[list[int]], max_new: int, stop) -> list[list[int]]:
        device = next(self.model.parameters()).device
        out = []
        for ids in prompts:
            seq, new = list(ids), []
            for _ in range(max_new):
                token = int(_forward(self.model, torch.tensor([seq], device=device), self.vocab)[0, -1].argmax())
                seq.append(token)
                new.append(token)
                if stop(new):
                    break
            out.append(new)
        return out


class CachedGenerator:
    """The same greedy decoding on the transformers model built in memory from the checkpoint (the
    export's model code), over a KV cache: prompts left-padded and masked, one forward per step
    for the whole batch. xPos makes q.k depend only on relative positions, so padding on the left
    does not change what a row computes (tests compare with `Generator`)."""

    def __init__(self, load: str, tokenizer, device):
        from flm_ext.export.generation import load_hf_model

        self.model, _ = load_hf_model(load, tokenizer=tokenizer, device=device)
        self.vocab = tokenizer.vocab_size

    @torch.no_grad()
    def batch(self, prompts: list[list[int]], max_new: int, stop) -> list[list[int]]:
        from transformers.cache_utils import DynamicCache

        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        cache, out, done = DynamicCache(), [[] for _ in prompts], [False] * len(prompts)
        for _ in range(max_new):
            logits = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1, :self.vocab]
            tokens = logits.argmax(-1)
            for row, token in enumerate(tokens.tolist()):
                if not done[row]:
                    out[row].append(token)
                    done[row] = stop(out[row])
            if all(done):
                break
            ids, mask = tokens[:, None], torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return out


@register_model("flm")
class FLMLM(TemplateLM):
    """lm-eval model args: load (checkpoint root or iter_N folder), tokenizer_type, tokenizer_model,
    vocab_file, merge_file (as pretrain_flm.py), batch_size, device, max_length, generation
    ("cache": batched KV-cache decoding on the export's model, needs load; "recompute"; "auto":
    cache when load is given), generation_batch_size (default 4 x batch_size)."""

    def __init__(self, load: str | None = None, tokenizer_type: str = "HuggingFaceTokenizer",
                 tokenizer_model: str | None = None, vocab_file: str | None = None, merge_file: str | None = None,
                 batch_size: int | str = 8, device: str | None = None, max_length: int | None = None,
                 generation: str = "auto", generation_batch_size: int | None = None, model=None, tokenizer=None,
                 config=None, max_batch_size: int | None = None, **unused):
        super().__init__()
        if unused:
            print(f"flm: ignoring unknown model_args {sorted(unused)}", file=sys.stderr, flush=True)
        if model is None:
            from flm_ext.data.tokenizers import build_tokenizer
            from flm_ext.evaluation.core import load_model

            if not load:
                raise ValueError("the flm model needs load=CHECKPOINT in --model_args")
            from flm_ext.checkpoint import check_tokenizer

            tokenizer = build_tokenizer(tokenizer_type, vocab_file, merge_file, tokenizer_model)
            model, config, record = load_model(load)
            check_tokenizer(record, tokenizer, load)
        if device:
            model = model.to(device)
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, config
        self.max_length = int(max_length or config.seq_length)
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        # decoding is one token per step for the whole batch: wider batches cost little more per step
        self.generation_batch_size = int(generation_batch_size or 4 * self.batch_size)
        if generation not in ("auto", "cache", "recompute"):
            raise ValueError(f"generation={generation!r}: choose auto, cache or recompute")
        if generation == "cache" and not load:
            raise ValueError("generation=cache needs load=CHECKPOINT")
        self.load, self.generation = load, generation
        self._generator = None

    @property
    def generator(self):
        """Built on first use: evaluations without generation never build the cached model."""
        if self._generator is None:
            cached = self.generation == "cache" or (self.generation == "auto" and self.load)
            self._generator = (CachedGenerator(self.load, self.tokenizer, self.device) if cached
                               else Generator(self.model, self.tokenizer.vocab_size))
        return self._generator

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eod

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return self.tokenizer.tokenize(string)

    def tok_decode(self, ids) -> str:
        return self.tokenizer.detokenize(ids)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, all greedy) per (key, context ids, continuation ids)."""
        results: list = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        progress = Progress(len(requests), "log-likelihoods", unit="requests", interval=10.0)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            rows, spans = [], []
            for i in batch:
                _, context, continuation = requests[i]
                if not continuation:
                    raise ValueError("an empty continuation cannot be scored")
                full = (list(context) + list(continuation))[-(self.max_length + 1):]
                rows.append(full[:-1])
                spans.append((len(full) - 1 - len(continuation), list(continuation)))
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=self.device)
            logp = F.log_softmax(_forward(self.model, ids, self.tokenizer.vocab_size), dim=-1)
            for row, i, (offset, continuation) in zip(logp, batch, spans):
                part = row[offset:offset + len(continuation)]
                target = torch.tensor(continuation, device=part.device)
                score = part.gather(-1, target[:, None]).sum().item()
                results[i] = (score, bool((part.argmax(-1) == target).all()))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
            if not disable_tqdm:
                progress.update(len(batch))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood in disjoint windows of max_length, as lm-eval's backends do."""
        out = []
        for (text,) in [r.args for r in requests]:
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1)]
            scores = self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=True)
            out.append(sum(s for s, _ in scores))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy text after each context, cut at the first stop string (default: end of document).
        Requests with the same stop strings and length limit are decoded together, longest first;
        a context keeps its last max_length - max_gen_toks tokens (as lm-eval's hf backend)."""
        eod_text = self.tok_decode([self.eot_token_id])
        groups: dict = {}
        for i, request in enumerate(requests):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            ids = self.tok_encode(context)[-max(1, self.max_length - max_new):]
            groups.setdefault((tuple(until + [eod_text]), max_new), []).append((i, ids))
        out: list = [None] * len(requests)
        progress = Progress(len(requests), "generation", unit="requests", interval=10.0)
        for (stops, max_new), items in groups.items():
            items.sort(key=lambda item: -len(item[1]))
            for start in range(0, len(items), self.generation_batch_size):
                chunk = items[start:start + self.generation_batch_size]
                news = self.generator.batch([ids for _, ids in chunk], max_new,
                                            lambda toks: any(s in self.tok_decode(toks) for s in stops))
                for (i, _), new in zip(chunk, news):
                    text = self.tok_decode(new)
                    for stop in stops:
                        text = text.split(stop)[0]
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                if not disable_tqdm:
                    progress.update(len(chunk))
        return out
