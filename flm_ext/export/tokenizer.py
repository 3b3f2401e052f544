"""Tokenizer files of an export, so that `AutoTokenizer.from_pretrained(folder)` gives the training ids.

The training tokenizers (flm_ext/data/tokenizers.py) are not stored in a checkpoint; the export
takes the same flags as pretrain_flm.py and writes:

- HuggingFaceTokenizer: its tokenizer.json, copied;
- CL100kTokenizer / GPT2BPETokenizer (run by tiktoken in training): a tokenizer.json built with
  HF `tokenizers` from the same ranks, pattern and special tokens: a byte-level BPE whose merges
  are ordered by the rank of the token they make (tiktoken merges the lowest-ranked pair first),
  with `ignore_merges` (a pre-token that is itself in the vocabulary is one token, as in tiktoken)
  and the special tokens at their tiktoken ids;

plus tokenizer_config.json with the end-of-document token as `eos_token` and
`split_special_tokens` (as in training, special-token text inside a prompt is ordinary text).
"""
from __future__ import annotations

import json
import os
import shutil


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiktoken_to_hf(params: dict):
    """An HF `tokenizers.Tokenizer` that encodes like tiktoken with these params."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    table = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    ranks: dict[bytes, int] = params["mergeable_ranks"]
    merges = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    vocab = {text(token): rank for token, rank in ranks.items()}
    specials = params.get("special_tokens", {})
    vocab.update(specials)
    tok = Tokenizer(models.BPE(vocab, [(text(l), text(r)) for *_, l, r in merges], ignore_merges=True))
    # Oniguruma reads "{1,3}+" as "{1,3}, one or more times", not as possessive; here possessive
    # and greedy match the same (nothing follows the repeat inside its alternative).
    pattern = params["pat_str"].replace("}+", "}")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s, _ in sorted(specials.items(), key=lambda kv: kv[1])])
    return tok


def write_tokenizer(tokenizer, out: str, *, tokenizer_model: str | None, model_max_length: int) -> str:
    """Write tokenizer.json + tokenizer_config.json into `out`; returns the eos token's text."""
    params = getattr(tokenizer, "tiktoken_params", None)
    target = os.path.join(out, "tokenizer.json")
    if params is not None:
        hf = tiktoken_to_hf(params)
        hf.save(target)
        eos = next(s for s, i in params["special_tokens"].items() if i == tokenizer.eod)
    else:
        from tokenizers import Tokenizer

        shutil.copyfile(tokenizer_model, target)
        eos = Tokenizer.from_file(target).id_to_token(tokenizer.eod)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": eos,
              "unk_token": None, "pad_token": None, "add_bos_token": False, "add_eos_token": False,
              "split_special_tokens": True, "clean_up_tokenization_spaces": False,
              "model_max_length": model_max_length}
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return eos
