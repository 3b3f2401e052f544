"""The IQ suite on disk: one local jsonl and one lm-eval task YAML per sub-test, a group per family,
the group `iq` over all of them and `manifest.json` (seed, counts, random baselines).

Sub-tests are named `iq_<kind>[_<lang>]` (pattern mining is language-neutral). Each is generated
from `random.Random(f"{seed}:{name}")`, so a sub-test's items do not depend on which others are
generated, and the same seed gives byte-identical files. Every item is checked against its solver
before anything is written.
"""
from __future__ import annotations

import collections
import json
import os
import random
from dataclasses import dataclass

import yaml

from flm_ext import fileio
from flm_ext.evaluation.iq import generators, solvers

FAMILIES = ("symbolic_mapping", "rule_understanding", "pattern_mining", "anti_interference")
LANGS = ("en", "zh")


@dataclass(frozen=True)
class SubTest:
    kind: str      # generator / solver name
    family: str
    lang: str      # en, zh, or "" for language-neutral
    output: str    # "choice" (accuracy) or "generate" (exact match)
    shots: int     # demonstrations inside each prompt
    paper: str     # the paper's column this sub-test stands for (flm_ext.evaluation.paper)

    @property
    def name(self) -> str:
        return f"iq_{self.kind}" + (f"_{self.lang}" if self.lang else "")


def _subtests() -> list[SubTest]:
    out = [SubTest("symbolic_nli", "symbolic_mapping", "en", "choice", 4, "superglue_iq"),
           SubTest("symbolic_boolq", "symbolic_mapping", "en", "choice", 4, "superglue_iq"),
           SubTest("symbolic_nli", "symbolic_mapping", "zh", "choice", 4, "clue_iq"),
           SubTest("symbolic_sentiment", "symbolic_mapping", "zh", "choice", 4, "clue_iq"),
           SubTest("replace_lowercase", "rule_understanding", "en", "generate", 4, "replace_lowercase")]
    for lang in LANGS:
        out += [SubTest("counting", "rule_understanding", lang, "generate", 0, "counting"),
                SubTest("replace_word", "rule_understanding", lang, "generate", 4, "replace_word")]
    out += [SubTest(kind, "pattern_mining", "", "generate", 5, kind)
            for kind in ("head_tail", "full_repeating", "head_slicing")]
    for lang in LANGS:
        out += [SubTest(kind, "anti_interference", lang, "choice", 0, kind)
                for kind in ("multikey", "single_fact", "two_facts")]
    return out


SUBTESTS = _subtests()
BY_NAME = {t.name: t for t in SUBTESTS}


def select(langs=LANGS) -> list[SubTest]:
    return [t for t in SUBTESTS if not t.lang or t.lang in langs]


def generate(test: SubTest, seed: int, n: int) -> list[dict]:
    """n checked items of one sub-test."""
    rng = random.Random(f"{seed}:{test.name}")
    docs = getattr(generators, test.kind)(rng, n, test.lang or "en")
    for i, doc in enumerate(docs):
        check(test, doc, where=f"{test.name} item {i}")
    return docs


def check(test: SubTest, doc: dict, where: str = "") -> None:
    """The solver's answer is the stored one, and (for choices) occurs exactly once."""
    expected = doc["choices"][doc["gold"]] if test.output == "choice" else doc["answer"]
    got = solvers.solve(test.kind, test.lang or "en", doc["prompt"], doc.get("meta", {}))
    if got != expected:
        raise AssertionError(f"{where}: solver says {got!r}, generator stored {expected!r}")
    if test.output == "choice" and doc["choices"].count(got) != 1:
        raise AssertionError(f"{where}: the answer {got!r} is not exactly one of {doc['choices']}")


def baseline(test: SubTest, docs: list[dict]) -> dict:
    """What chance scores: for choices the expected accuracy of a uniform guess; for generation
    the share of the commonest answer (the best any constant answer can do)."""
    if test.output == "choice":
        return {"random_baseline": sum(1 / len(d["choices"]) for d in docs) / len(docs),
                "baseline_kind": "uniform guess over the choices"}
    top = collections.Counter(d["answer"] for d in docs).most_common(1)[0][1]
    return {"random_baseline": top / len(docs), "baseline_kind": "commonest answer, always given"}


def read_docs(folder: str, name: str, limit: int | None = None) -> list[dict]:
    with open(os.path.join(folder, f"{name}.jsonl"), encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    return docs[:limit] if limit else docs


def _task_yaml(test: SubTest, data_file: str, docs: list[dict], seed: int) -> dict:
    config = {"task": test.name, "dataset_path": "json",
              "dataset_kwargs": {"data_files": {"test": data_file}}, "test_split": "test",
              "doc_to_text": "prompt", "num_fewshot": 0}
    if test.output == "choice":
        config.update(output_type="multiple_choice", doc_to_choice="choices", doc_to_target="gold",
                      metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}])
    else:
        longest = max(len(d["answer"].encode("utf-8")) for d in docs)
        config.update(output_type="generate_until", doc_to_target="answer",
                      # enough for the answer plus a leading space and the newline in any byte-level BPE
                      generation_kwargs={"until": ["\n"], "max_gen_toks": longest + 4, "do_sample": False},
                      filter_list=[{"name": "strip", "filter": [{"function": "remove_whitespace"},
                                                                {"function": "take_first"}]}],
                      metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}])
    config["metadata"] = {"version": 1, "family": test.family, "shots_in_prompt": test.shots, "seed": seed,
                          **baseline(test, docs)}
    return config


def _dump(path: str, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(obj, f, sort_keys=False, allow_unicode=True, width=1000)


def _group_yaml(family: str, tests: list[SubTest]) -> dict:
    metric = "acc" if tests[0].output == "choice" else "exact_match"
    agg = {"metric": metric, "aggregation": "mean", "weight_by_size": False}
    if metric == "exact_match":
        agg["filter_list"] = ["strip"]
    return {"group": f"iq_{family}", "task": [t.name for t in tests], "aggregate_metric_list": [agg],
            "metadata": {"version": 1}}


def write_suite(out: str, seed: int = 1234, n: int = 100, langs=LANGS, progress=None) -> dict:
    """Generate, check and write the suite into `out` (built in `out.partial`, then renamed)."""
    tests = select(langs)
    final = os.path.abspath(out)
    manifest = {"seed": seed, "n": n, "langs": list(langs), "subtests": {}}
    with fileio.building(final) as tmp:
        for test in tests:
            docs = generate(test, seed, n)
            with open(os.path.join(tmp, f"{test.name}.jsonl"), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
            _dump(os.path.join(tmp, f"{test.name}.yaml"),
                  _task_yaml(test, os.path.join(final, f"{test.name}.jsonl"), docs, seed))
            manifest["subtests"][test.name] = {"family": test.family, "lang": test.lang or "any",
                                               "output": test.output, "shots": test.shots, "items": len(docs),
                                               **baseline(test, docs)}
            if progress:
                progress.update(1, test.name)
        for family in FAMILIES:
            members = [t for t in tests if t.family == family]
            if members:
                _dump(os.path.join(tmp, f"iq_{family}.yaml"), _group_yaml(family, members))
        _dump(os.path.join(tmp, "iq.yaml"), {"group": "iq", "task": [f"iq_{f}" for f in FAMILIES
                                                                     if any(t.family == f for t in tests)],
                                            "metadata": {"version": 1}})
        with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest
