"""The IQ suite on disk: one local jsonl and one lm-eval task YAML per sub-test, a group per family,
the group `iq` over all of them and `manifest.json` (seed, counts, random baselines).

Sub-tests are named `iq_<kind>[_<lang>]` (pattern mining is language-neutral). Each is generated
from `random.Random(f"{seed}:{name}")`, so a sub-test's items do not depend on which others are
generated, and the same seed gives byte-identical files. Every item is checked against its solver
before anything is written.

The sub-tests are a registry: `register` below adds one item kind (its generator and solver, family,
output type, shots and the paper column per language) once; everything else (the suite's files and
groups, `tools/evaluate.py --tasks` names, the report's columns, the oracle model) reads `SUBTESTS`.
"""
from __future__ import annotations

import collections
import json
import os
import random
from dataclasses import dataclass, field
from typing import Callable

import yaml

from flm_ext import fileio
from flm_ext.evaluation.iq import generators, solvers

FAMILIES = ("symbolic_mapping", "rule_understanding", "pattern_mining", "anti_interference")
LANGS = ("en", "zh")
OUTPUTS = ("choice", "generate")


@dataclass(frozen=True)
class SubTest:
    kind: str      # the item kind (its generator and solver)
    family: str
    lang: str      # en, zh, or "" for language-neutral
    output: str    # "choice" (accuracy) or "generate" (exact match)
    shots: int     # demonstrations inside each prompt
    paper: str     # the paper's column this sub-test stands for (flm_ext.evaluation.paper)
    generate_items: Callable[[random.Random, int, str], list[dict]] = field(compare=False, repr=False)
    solve: Callable[[str, str, dict], str] = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"iq_{self.kind}" + (f"_{self.lang}" if self.lang else "")


SUBTESTS: list[SubTest] = []         # in registration order: the order of the suite's files and groups
BY_NAME: dict[str, SubTest] = {}


def register(kind: str, family: str, output: str, shots: int, generate_items, solve,
             papers: dict[str, str]) -> list[SubTest]:
    """One item kind as sub-tests: `papers` maps each language it is generated in ("" for
    language-neutral) to the paper's column it stands for. `generate_items(rng, n, lang)` makes
    items, `solve(prompt, lang, meta)` answers one from its prompt alone (generators.py, solvers.py)."""
    from flm_ext.evaluation import paper

    if family not in FAMILIES or output not in OUTPUTS:
        raise ValueError(f"IQ kind {kind}: family {family!r} or output {output!r} unknown "
                         f"(families {FAMILIES}, outputs {OUTPUTS})")
    tests = [SubTest(kind, family, lang, output, shots, column, generate_items, solve)
             for lang, column in papers.items()]
    for test in tests:
        if test.lang not in ("", *LANGS) or test.paper not in paper.IQ:
            raise ValueError(f"{test.name}: language {test.lang!r} or paper column {test.paper!r} unknown")
        if test.name in BY_NAME:
            raise ValueError(f"IQ sub-test {test.name} is registered twice")
    SUBTESTS.extend(tests)
    BY_NAME.update((t.name, t) for t in tests)
    return tests


G, S = generators, solvers
register("symbolic_nli", "symbolic_mapping", "choice", 4, G.symbolic_nli, S.symbolic_nli,
         {"en": "superglue_iq", "zh": "clue_iq"})
register("symbolic_boolq", "symbolic_mapping", "choice", 4, G.symbolic_boolq, S.symbolic_boolq, {"en": "superglue_iq"})
register("symbolic_sentiment", "symbolic_mapping", "choice", 4, G.symbolic_sentiment, S.symbolic_sentiment,
         {"zh": "clue_iq"})
register("replace_lowercase", "rule_understanding", "generate", 4, G.replace_lowercase, S.replace_lowercase,
         {"en": "replace_lowercase"})
register("counting", "rule_understanding", "generate", 0, G.counting, S.counting, {"en": "counting", "zh": "counting"})
register("replace_word", "rule_understanding", "generate", 4, G.replace_word, S.replace_word,
         {"en": "replace_word", "zh": "replace_word"})
register("head_tail", "pattern_mining", "generate", 5, G.head_tail, S.pattern, {"": "head_tail"})
register("full_repeating", "pattern_mining", "generate", 5, G.full_repeating, S.pattern, {"": "full_repeating"})
register("head_slicing", "pattern_mining", "generate", 5, G.head_slicing, S.pattern, {"": "head_slicing"})
register("multikey", "anti_interference", "choice", 0, G.multikey, S.multikey, {"en": "multikey", "zh": "multikey"})
register("single_fact", "anti_interference", "choice", 0, G.single_fact, S.single_fact,
         {"en": "single_fact", "zh": "single_fact"})
register("two_facts", "anti_interference", "choice", 0, G.two_facts, S.two_facts,
         {"en": "two_facts", "zh": "two_facts"})


def select(langs=LANGS) -> list[SubTest]:
    return [t for t in SUBTESTS if not t.lang or t.lang in langs]


def generate(test: SubTest, seed: int, n: int) -> list[dict]:
    """n checked items of one sub-test."""
    rng = random.Random(f"{seed}:{test.name}")
    docs = test.generate_items(rng, n, test.lang or "en")
    for i, doc in enumerate(docs):
        check(test, doc, where=f"{test.name} item {i}")
    return docs


def check(test: SubTest, doc: dict, where: str = "") -> None:
    """The solver's answer is the stored one, and (for choices) occurs exactly once."""
    expected = doc["choices"][doc["gold"]] if test.output == "choice" else doc["answer"]
    got = test.solve(doc["prompt"], test.lang or "en", doc.get("meta", {}))
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
