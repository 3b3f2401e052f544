"""Text generation with a KV cache, from an exported folder or straight from a checkpoint.

`load_hf_model(path)` gives (FLMForCausalLM, Codec) for either kind of path: an exported folder
is loaded with transformers; a torch_dist checkpoint (any saved TP/PP) is converted in memory by
the export's own tensor plan (flm_ext/export/convert.py), so both paths run the same model code.
`generate_tokens` is the decoding loop: one forward over the prompt, then one token per forward
with the cache; it yields each token as it is chosen, so callers can stream. `StreamDecoder` turns
tokens into printable text as soon as it is complete UTF-8 (an emoji can span several tokens).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch


@dataclass(frozen=True)
class Sampling:
    """greedy=True: argmax. Otherwise softmax(logits / temperature) restricted to the top_k tokens
    (0: all) and to the smallest set whose probability reaches top_p (1.0: all)."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def check(self) -> None:
        if not self.greedy:
            if not self.temperature > 0:
                raise ValueError(f"--temperature {self.temperature} must be > 0")
            if self.top_k < 0:
                raise ValueError(f"--top-k {self.top_k} must be >= 0")
            if not 0 < self.top_p <= 1:
                raise ValueError(f"--top-p {self.top_p} must be in (0, 1]")


class Codec:
    """Text <-> ids for generation, over either the training tokenizer or a transformers one."""

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[Sequence[int]], str], eos: int | None):
        self.encode, self.decode, self.eos = encode, decode, eos

    @classmethod
    def from_hf(cls, tok) -> "Codec":
        return cls(lambda text: tok.encode(text, add_special_tokens=False),
                   lambda ids: tok.decode(list(ids), skip_special_tokens=False), tok.eos_token_id)

    @classmethod
    def from_training(cls, tok) -> "Codec":
        return cls(tok.tokenize, tok.detokenize, tok.eod)


def is_export_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def model_from_checkpoint(ckpt, vocab_size: int, eos: int | None, dtype: torch.dtype = torch.float32):
    """An FLMForCausalLM holding an open checkpoint's weights (growth masks folded as in an export)."""
    from flm_ext.export.configuration_flm import FLMConfig
    from flm_ext.export.convert import growth_of, hf_config, plan_tensors
    from flm_ext.export.modeling_flm import FLMForCausalLM

    growth, lam = growth_of(ckpt)
    fields = hf_config(ckpt.config, vocab_size, eos, dtype, ckpt.iteration, growth, lam)
    fields.pop("dtype")
    with torch.device("meta"):
        model = FLMForCausalLM(FLMConfig(**fields))
    state = {name: torch.cat([b.to(dtype) for b in blocks()]) for name, _, blocks in plan_tensors(ckpt, vocab_size)}
    model.load_state_dict(state, strict=False, assign=True)
    if ckpt.config.share_embeddings_and_output_weights:
        model.lm_head.weight = model.model.embed_tokens.weight
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{ckpt.folder}: no weights for {missing[:3]}")
    return model.eval()


def load_hf_model(path: str, *, tokenizer=None, iteration: int | None = None, dtype: torch.dtype = torch.float32,
                  device: str | torch.device | None = None, trust_remote_code: bool = False):
    """(model, Codec) from an exported folder or a checkpoint (then `tokenizer`, the training
    tokenizer, gives the true vocabulary and the text codec; without it ids only, full embedding).
    An exported folder runs this package's own model code; code that differs from it only with
    `trust_remote_code` (flm_ext/export/loading.py)."""
    if is_export_folder(path):
        from flm_ext.export.loading import load_export_model, load_export_tokenizer

        model = load_export_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
        codec = Codec.from_hf(load_export_tokenizer(path, model.config, trust_remote_code=trust_remote_code))
    else:
        from flm_ext.export import open_for_export

        ckpt = open_for_export(path, iteration)
        vocab = tokenizer.vocab_size if tokenizer is not None else ckpt.config.vocab_size
        eos = tokenizer.eod if tokenizer is not None else None
        model = model_from_checkpoint(ckpt, vocab, eos, dtype)
        codec = Codec.from_training(tokenizer) if tokenizer is not None else None
    if device is not None:
        model.to(device)
    return model, codec


def context_length(model) -> int | None:
    """The positions the model was trained for (config max_position_embeddings), if it says."""
    return getattr(model.config, "max_position_embeddings", None)


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> int:
    """One token id from a [vocab] logits vector."""
    if sampling.greedy:
        return int(torch.argmax(logits))
    logits = logits.float() / sampling.temperature
    if 0 < sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= sampling.top_p  # keep up to reaching top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def generate_tokens(model, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(), *,
                    eos: int | None = None, generator: torch.Generator | None = None,
                    on_logits: Callable[[torch.Tensor], None] | None = None) -> Iterator[int]:
    """Yield up to `max_new_tokens` ids after `prompt_ids` (stops after `eos`), one forward per token
    over the KV cache. `on_logits` sees each step's [vocab] logits (tests, scoring)."""
    from transformers.cache_utils import DynamicCache

    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token")
    device = next(model.parameters()).device
    cache = DynamicCache()
    ids = torch.tensor([list(prompt_ids)], device=device)
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]
        if on_logits is not None:
            on_logits(logits)
        token = pick(logits, sampling, generator)
        yield token
        if eos is not None and token == eos:
            return
        ids = torch.tensor([[token]], device=device)


class StreamDecoder:
    """Generated ids -> new printable text, holding back an incomplete UTF-8 character."""

    def __init__(self, codec: Codec):
        self.codec, self.ids, self.shown = codec, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.codec.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.shown = text[self.shown:], len(text)
        return new

    def flush(self) -> str:
        text = self.codec.decode(self.ids)
        new, self.shown = text[self.shown:], len(text)
        return new


def generate_text(model, codec: Codec, prompt: str, max_new_tokens: int, sampling: Sampling = Sampling(), *,
                  stop: Sequence[str] = (), seed: int | None = None,
                  on_text: Callable[[str], None] | None = None) -> str:
    """The continuation of `prompt` as text, cut before the first `stop` string; `on_text` streams it."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    decoder, out = StreamDecoder(codec), ""
    for token in generate_tokens(model, codec.encode(prompt), max_new_tokens, sampling, eos=codec.eos,
                                 generator=generator):
        if token == codec.eos:
            break
        piece = decoder.push(token)
        out += piece
        hit = min((out.find(s) for s in stop if s and s in out), default=-1)
        if hit >= 0:
            if on_text is not None:
                on_text(piece[:max(0, len(piece) - (len(out) - hit))])
            return out[:hit]
        if on_text is not None and piece:
            on_text(piece)
    tail = decoder.flush()
    if on_text is not None and tail:
        on_text(tail)
    return out + tail


def _fail(message: str) -> int:
    import sys

    print(f"generate: error: {message}", file=sys.stderr, flush=True)
    return 2


def run_cli(args) -> int:
    """tools/generate.py: check flags, load, then stream one continuation per prompt."""
    import sys

    from flm_ext.export import ExportError, build_tokenizer_from_flags

    if args.greedy and args.temperature is not None:
        return _fail("give --greedy or --temperature, not both")
    if (args.prompt is None) == (not args.interactive):
        return _fail("give --prompt TEXT or --interactive (one of them)")
    if args.max_new_tokens < 1:
        return _fail(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    if args.prompt is not None and not all(args.prompt):
        return _fail("--prompt is empty: give the text to continue")
    sampling = Sampling(greedy=args.temperature is None, temperature=args.temperature or 1.0, top_k=args.top_k,
                        top_p=args.top_p)
    try:
        sampling.check()
    except ValueError as e:
        return _fail(str(e))
    if not os.path.exists(args.load):
        return _fail(f"--load {args.load}: no such file or directory")
    output = getattr(args, "output", None)
    if output and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        return _fail(f"--output {output}: its folder does not exist")
    tokenizer = None
    if not is_export_folder(args.load):
        if args.tokenizer_type is None:
            return _fail(f"--load {args.load} is a training checkpoint: give the --tokenizer-type (and "
                         f"--tokenizer-model / --vocab-file / --merge-file) it was trained with")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # its "indexing errors" warning on long prompts: checked below, in our words
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    try:
        if args.tokenizer_type is not None and not is_export_folder(args.load):
            tokenizer = build_tokenizer_from_flags(args)
        model, codec = load_hf_model(args.load, tokenizer=tokenizer, iteration=args.ckpt_step, dtype=dtype,
                                     device=device, trust_remote_code=getattr(args, "trust_remote_code", False))
    except (ExportError, OSError, ValueError) as e:
        return _fail(str(e))
    context = context_length(model)
    prompts = args.prompt if args.prompt is not None else (line.rstrip("\n") for line in sys.stdin)
    generations = []
    for prompt in prompts:
        if not prompt:
            continue  # an empty line in --interactive
        n = len(codec.encode(prompt))
        if not n:
            return _fail("the prompt encodes to no tokens")
        if context is not None and n > context:
            return _fail(f"the prompt is {n} tokens, longer than the model's context of {context} "
                         f"(max_position_embeddings): shorten it to at most {context} tokens")
        if context is not None and n + args.max_new_tokens > context:
            print(f"generate: note: the prompt ({n} tokens) and --max-new-tokens {args.max_new_tokens} go past the "
                  f"model's context of {context}: positions past it were never trained", file=sys.stderr, flush=True)
        sys.stdout.write(prompt)
        sys.stdout.flush()
        text = generate_text(model, codec, prompt, args.max_new_tokens, sampling, seed=args.seed,
                             on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
        sys.stdout.write("\n")
        sys.stdout.flush()
        generations.append({"prompt": prompt, "continuation": text, "prompt_tokens": n})
    if output:
        from flm_ext.fileio import atomic_write_json

        atomic_write_json(output, {"load": args.load, "max_new_tokens": args.max_new_tokens,
                                   "sampling": asdict(sampling), "seed": args.seed,
                                   "generations": generations})
    return 0
