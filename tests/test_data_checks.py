"""The data checks' parts: the sidecar against megatron-core's reader, the vocabulary fingerprint,
data without a sidecar, an unweighted blend of several prefixes, and the repetition note."""
import json
import os
import shutil

import numpy

from data_testutils import read_indexed
from flm_ext.data.checks import check_data_matches
from flm_ext.data.datasets import DataConfig, build_pretraining_datasets, check_training_data
from flm_ext.data.tokenizers import build_tokenizer


def test_sidecar_describes_the_files(data):
    docs, ds = read_indexed(data["en"])
    side = json.load(open(data["en"] + ".json"))
    flat = [t for d in docs for t in d]
    assert (side["documents"], side["sequences"], side["tokens"]) == (len(ds.document_indices) - 1, len(docs), len(flat))
    assert side["max_token_id"] == max(flat) and side["dtype"] == "uint16"
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=data["tokenizer"])
    assert side["tokenizer"]["vocab_fingerprint"] == tok.vocab_fingerprint
    assert side["flags"]["append_eod"] is True and side["inputs"][0]["path"].endswith("en.jsonl")


def test_fingerprint_is_the_vocabulary_not_the_file(data, tmp_path):
    model = json.load(open(data["tokenizer"], encoding="utf-8"))
    reformatted = tmp_path / "same.json"
    reformatted.write_text(json.dumps(model, indent=0), encoding="utf-8")
    changed = dict(model, model=dict(model["model"], vocab=dict(model["model"]["vocab"])))
    vocab = changed["model"]["vocab"]
    a, b = (next(t for t, i in vocab.items() if i == k) for k in (500, 501))
    vocab[a], vocab[b] = 501, 500  # two ids swapped: the same tokens, other meanings of the ids
    other = tmp_path / "other.json"
    other.write_text(json.dumps(changed), encoding="utf-8")
    fp = [build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(p)).vocab_fingerprint
          for p in (data["tokenizer"], reformatted, other)]
    assert fp[0] == fp[1] != fp[2]
    assert build_tokenizer("GPT2BPETokenizer").vocab_fingerprint != fp[0]


def test_data_without_a_sidecar_is_scanned(data, tmp_path):
    prefix = str(tmp_path / "plain_text_document")
    for ext in (".bin", ".idx"):
        shutil.copy(data["en"] + ext, prefix + ext)
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=data["tokenizer"])
    largest = int(numpy.fromfile(prefix + ".bin", dtype=numpy.uint16).max())  # the reference: every id
    [warning] = check_data_matches(prefix, tok, 1024)
    assert "cannot be verified" in warning and f"is {largest} (vocabulary 1024)" in warning
    assert check_data_matches(data["en"], tok, 1024) == []


def test_sidecar_is_trusted_only_for_its_own_bin(data, tmp_path, monkeypatch):
    """A matching fingerprint skips the scan; one id changed in place (same size, same counts: the
    sidecar's documents and largest id still agree) is noticed, scanned and refused."""
    import pytest

    from flm_ext.data import checks

    prefix = str(tmp_path / "edited_text_document")
    for ext in (".bin", ".idx", ".json"):
        shutil.copy(data["en"] + ext, prefix + ext)
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=data["tokenizer"])
    scans = []
    real_scan = checks.scan_ids
    monkeypatch.setattr(checks, "scan_ids", lambda info, emit=None: scans.append(info.prefix) or real_scan(info))
    assert check_data_matches(prefix, tok, 1024) == [] and scans == []
    ids = numpy.memmap(prefix + ".bin", dtype=numpy.uint16, mode="r+")
    ids[len(ids) // 3] = 5000  # what a GPT-2 id would be
    ids.flush()
    del ids
    with pytest.raises(checks.DataError, match="holds token id 5000, outside the model's vocabulary of 1024 .*"
                                               "was written for another .bin"):
        check_data_matches(prefix, tok, 1024)
    assert scans == [prefix]


def test_unweighted_blend_gives_every_sample_asked(data, tmp_path):
    """megatron builds one epoch of each prefix of an unweighted blend and caps it there; the
    trainer asks for more here, so the prefixes are weighted by their token counts instead."""
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=data["tokenizer"])
    cfg = DataConfig(data_path=[data["en"], data["zh"]], split="90,10,0", data_cache_path=str(tmp_path / "c"))
    train, _, _ = build_pretraining_datasets(cfg, tok, 64, 8, 8000, 0, 0, seed=1)
    assert len(train.language) >= 8000 and train[7999]["tokens"].shape == (64,)
    notes = check_training_data(cfg, tok, 1024, 8, (8000, 0, 0), seq_length=64)
    en_tokens = os.path.getsize(data["en"] + ".bin") // 2
    assert len(notes) == 2 and f"the train split of {data['en']}" in notes[0] and "is read 2 times" in notes[0]
    assert en_tokens > 100_000  # so one read holds ~1,700 samples and 8000 x 0.48 needs two


def test_scan_reads_every_chunk_and_reports_progress(data, monkeypatch):
    """The full scan in small chunks (as a large .bin is read) finds numpy's min and max over the
    whole file, with a progress line at the end."""
    from flm_ext.data import checks

    monkeypatch.setattr(checks, "_SCAN_CHUNK", 1000)
    monkeypatch.setattr(checks, "_SCAN_PROGRESS_BYTES", 0)
    ids = numpy.fromfile(data["en"] + ".bin", dtype=numpy.uint16)
    assert len(ids) > 10 * 1000
    lines = []
    low, high = checks.scan_ids(checks.check_indexed(data["en"], "--data-path"), emit=lines.append)
    assert (low, high) == (int(ids.min()), int(ids.max()))
    assert lines and "checking the ids of" in lines[-1] and "(100%)" in lines[-1]
