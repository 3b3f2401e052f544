"""Helpers shared by the tests/test_data_*.py files (small, deterministic inputs)."""
import gzip
import json
import os
import random
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EN_WORDS = "the of and to in that he shall unto for his lord they be is him not them it with all".split()
ZH_CHARS = "中国人民政府经济发展工作国家社会主义建设改革开放新年讲话记者北京报道"


def sample_texts(n: int, seed: int = 0):
    """Bilingual documents with the awkward parts: newlines, tabs, digits, emoji, quotes, CJK
    punctuation, a literal <|endoftext|> and the label emoji inside ordinary text."""
    rng = random.Random(seed)
    extras = ["\n", "\t", " 1998 ", "😈", "😡", "“引号”", "，", "。", " <|endoftext|> ", "é", "\\", '"']
    out = []
    for i in range(n):
        if i % 2:
            words = [rng.choice(EN_WORDS) for _ in range(rng.randint(1, 60))]
            text = " ".join(words)
        else:
            text = "".join(rng.choice(ZH_CHARS) for _ in range(rng.randint(1, 80)))
        if i % 3 == 0:
            text += rng.choice(extras) + rng.choice(EN_WORDS)
        out.append(text)
    return out


def write_jsonl(path, records, gz=False):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    return path


def run_tool(script, *args, cwd=None):
    """Run tools/<script> as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", script), *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )


def read_indexed(prefix):
    """All documents of a .bin/.idx pair through megatron-core's own reader, as lists."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))], ds
