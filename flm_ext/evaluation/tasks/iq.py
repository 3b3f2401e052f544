"""`iq`: the paper's IQ-style tests (flm_ext/evaluation/iq), generated offline from --iq-seed/--iq-n
unless --iq-dir names a suite, run through lm-eval on our model. Answers `iq`, `iq_<family>` and
every registered sub-test name (`iq.suite.SUBTESTS`). Reports each sub-test beside its random
baseline and the paper's column, and per family the mean of its columns, as the paper averages."""
from __future__ import annotations

import os
import tempfile
from statistics import mean

from flm_ext.evaluation import paper
from flm_ext.evaluation.iq import suite
from flm_ext.evaluation.tasks import Context, Task, pct, register


def suite_folder(folder: str | None, seed: int, n: int, langs, workdir: str | None) -> str:
    """An IQ suite folder: the given one, or one generated now (a fraction of a second)."""
    if folder:
        return folder
    name = f"iq_tasks_seed{seed}_n{n}_{'-'.join(langs)}"  # the same generator inputs, the same files
    target = os.path.join(workdir or tempfile.mkdtemp(prefix="flm_iq_"), name)
    if not os.path.exists(os.path.join(target, "manifest.json")):
        suite.write_suite(target, seed=seed, n=n, langs=langs)
    return target


def iq_rows(results: dict, folder: str, limit: int | None) -> dict:
    """Per sub-test score and baseline, and the paper's columns (our en/zh variants averaged per
    column, a family = the mean of its columns, as the paper averages its sub-tests)."""
    from flm_ext.evaluation.harness import score_of

    subtests, columns = {}, {}
    for name, test in suite.BY_NAME.items():
        if name not in results:
            continue
        _, value = score_of(results[name], "acc" if test.output == "choice" else "exact_match")
        docs = suite.read_docs(folder, name, limit)
        base = suite.baseline(test, docs)
        subtests[name] = {"family": test.family, "paper_column": test.paper, "score": value,
                          "items": results[name].get("sample_len") or len(docs),
                          **base, "paper_flm101b": paper.IQ[test.paper][0] / 100}
        columns.setdefault(test.family, {}).setdefault(test.paper, []).append((value, base["random_baseline"]))
    families = {}
    for family, cols in columns.items():
        per_column = {c: (mean(v for v, _ in xs), mean(b for _, b in xs)) for c, xs in cols.items()}
        figure = paper.IQ.get(family, (None,))[0]
        if figure is None and len(per_column) == 1:
            figure = paper.IQ[next(iter(per_column))][0]
        families[family] = {"score": mean(s for s, _ in per_column.values()),
                            "random_baseline": mean(b for _, b in per_column.values()),
                            "columns": {c: {"score": s, "random_baseline": b,
                                            "paper_flm101b": paper.IQ[c][0] / 100}
                                        for c, (s, b) in per_column.items()},
                            "paper_flm101b": None if figure is None else figure / 100}
    return {"suite": folder, "subtests": subtests, "families": families}


def run(ctx: Context, names: list[str]) -> dict:
    """The asked IQ names in one lm-eval run (their shots are in the prompts: never extra ones)."""
    from flm_ext.evaluation import harness

    folder = suite_folder(ctx.iq_dir, ctx.iq_seed, ctx.iq_n, ctx.iq_langs, ctx.workdir)
    tm, loaded, missing = harness.load_tasks(names, [folder, *ctx.include_paths], ctx.say)
    raw = harness.simple_evaluate(ctx.lm(), tm, [n for n in names if n in loaded], ctx.limit, None)
    return {"iq": {**iq_rows(raw, folder, ctx.limit), "missing": missing}}


def rows(result: dict) -> list[str]:
    """Each sub-test, each family's columns and mean, then each asked name whose data is missing."""
    from flm_ext.evaluation.harness import missing_row

    iq = result.get("iq")
    if not iq:
        return []
    lines = []
    for name, r in iq["subtests"].items():
        metric = "accuracy" if r["baseline_kind"].startswith("uniform") else "exact match"
        lines.append(f"| {name} | {metric} | {pct(r['score'])} | {pct(r['random_baseline'])} | "
                     f"{pct(r['paper_flm101b'])} ({r['paper_column']}) | {r['items']} |")
    for family, r in iq["families"].items():
        for column, c in r["columns"].items():
            if column != family:
                lines.append(f"| {family}: {column} | mean | {pct(c['score'])} | {pct(c['random_baseline'])} "
                             f"| {pct(c['paper_flm101b'])} | |")
        lines.append(f"| **{family}** | mean | {pct(r['score'])} | {pct(r['random_baseline'])} | "
                     f"{pct(r['paper_flm101b'])} | |")
    return lines + [missing_row(name) for name in iq.get("missing", {})]


def _parts() -> tuple[str, ...]:
    return (*(f"iq_{f}" for f in suite.FAMILIES), *suite.BY_NAME)


register(Task("iq", "lm-eval", "accuracy / exact match", "the paper's IQ-style tests (generated offline)", run, rows,
              paper="docs/FLM.md 6.4 (symbolic mapping, rule understanding, pattern mining, anti-interference)",
              parts=_parts))
