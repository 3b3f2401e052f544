"""What `tools/evaluate.py` runs: our tasks and any lm-eval task on one loaded checkpoint, one
results dict and one markdown table (score, random baseline, the paper's figure).

Task names: `perplexity` (per language, from --valid-data), `teacher` (FreeLM zero-shot accuracy,
from --teacher-data), `iq`, `iq_<family>` or one IQ sub-test (see `iq.suite`), and any other name
is handed to lm-eval (arc_challenge, hellaswag, mmlu, truthfulqa_mc2, ceval-valid, ...). An
lm-eval task whose data set is not on this machine is reported in one line and skipped.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from statistics import mean

from flm_ext.evaluation import paper
from flm_ext.evaluation.iq import suite

OURS = ("perplexity", "teacher")
IQ_NAMES = {"iq", *(f"iq_{f}" for f in suite.FAMILIES), *suite.BY_NAME}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def split_tasks(names: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(our tasks, IQ task names, other lm-eval task names), each in the given order."""
    ours = [n for n in names if n in OURS]
    iq = [n for n in names if n in IQ_NAMES]
    return ours, iq, [n for n in names if n not in OURS and n not in IQ_NAMES]


def iq_suite(folder: str | None, seed: int, n: int, langs, workdir: str | None) -> str:
    """An IQ suite folder: the given one, or one generated now (a fraction of a second)."""
    if folder:
        return folder
    name = f"iq_tasks_seed{seed}_n{n}_{'-'.join(langs)}"  # the same generator inputs, the same files
    target = os.path.join(workdir or tempfile.mkdtemp(prefix="flm_iq_"), name)
    if not os.path.exists(os.path.join(target, "manifest.json")):
        suite.write_suite(target, seed=seed, n=n, langs=langs)
    return target


def _dataset_of(tm, name: str, depth: int = 0) -> str | None:
    """The hub data set a task (or a group's first task) reads, from its YAML, if it names one."""
    entry = tm._entry(name)
    cfg = (entry.cfg if entry else None) or {}
    if cfg.get("dataset_path"):
        return cfg["dataset_path"] + (f" ({cfg['dataset_name']})" if cfg.get("dataset_name") else "")
    children = cfg.get("task")
    if depth < 4 and isinstance(children, list) and children:
        child = children[0]
        child = child.get("task") if isinstance(child, dict) else child
        return _dataset_of(tm, child, depth + 1) if isinstance(child, str) else None
    return None


def missing_data_line(tm, name: str, error: Exception) -> str:
    source = _dataset_of(tm, name) or "its data set"
    return (f"{name}: data set {source} is not on this machine ({type(error).__name__}); put a local copy "
            f"in HF_DATASETS_CACHE, or write a task YAML with `dataset_path: json` and `dataset_kwargs: "
            f"{{data_files: ...}}` pointing at local files and pass its folder with --include-path")


def _choice_baseline(tasks: dict, limit: int | None) -> float | None:
    """Mean 1/(number of choices) over the evaluated documents of multiple-choice tasks."""
    values = []
    for task in tasks.values():
        if task.OUTPUT_TYPE != "multiple_choice":
            return None
        docs = list(task.eval_docs)[:limit] if limit else list(task.eval_docs)
        values += [1 / len(task.doc_to_choice(d)) for d in docs]
    return mean(values) if values else None


def task_manager(names: list[str], include_paths: list[str]):
    """lm-eval's TaskManager knowing every name; an unknown name raises KeyError (one line).
    lm-eval's own task index (~10 s to build) is read only when a name is not in `include_paths`."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=include_paths or None, include_defaults=not include_paths)
    if include_paths and any(name not in tm.all_tasks for name in names):
        tm = TaskManager(include_path=include_paths, include_defaults=True)
    for name in names:
        if name not in tm.all_tasks:
            raise KeyError(f"--tasks {name}: no such task (ours: {', '.join(OURS)}, iq, iq_<family>; "
                           f"or an lm-eval task name)")
    return tm


def load_lm_eval_tasks(names: list[str], include_paths: list[str]):
    """(TaskManager, {name: loaded task dict}, {name: missing-data line}); unknown names raise."""
    tm = task_manager(names, include_paths)
    loaded, missing = {}, {}
    for name in names:
        try:
            loaded[name] = tm.load([name])
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as error:
            missing[name] = missing_data_line(tm, name, error)
            say(missing[name])
    return tm, loaded, missing


def score_of(row: dict, preferred: str | None = None) -> tuple[str, float] | None:
    """(metric, value) from one lm-eval result row: the preferred metric, else acc_norm / acc /
    exact_match / mc2-style acc, whichever it reports first."""
    keys = [k for k in row if "," in k and "_stderr" not in k and isinstance(row[k], (int, float))]
    for metric in ([preferred] if preferred else []) + ["acc_norm", "acc", "exact_match"]:
        for key in keys:
            if key.split(",")[0] == metric:
                return key, float(row[key])
    return (keys[0], float(row[keys[0]])) if keys else None


def iq_rows(results: dict, folder: str, limit: int | None) -> dict:
    """Per sub-test score and baseline, and the paper's columns (our en/zh variants averaged per
    column, a family = the mean of its columns, as the paper averages its sub-tests)."""
    subtests, columns = {}, {}
    for name, test in suite.BY_NAME.items():
        if name not in results:
            continue
        _, value = score_of(results[name], "acc" if test.output == "choice" else "exact_match")
        base = suite.baseline(test, suite.read_docs(folder, name, limit))
        subtests[name] = {"family": test.family, "paper_column": test.paper, "score": value,
                          "items": results[name].get("sample_len") or len(suite.read_docs(folder, name, limit)),
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


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown_table(result: dict) -> str:
    """One table: our score, the random baseline and the paper's FLM-101B figure (percent)."""
    lines = ["| task | metric | ours | random baseline | paper FLM-101B | items |", "|---|---|---|---|---|---|"]
    for lang, r in result.get("languages", {}).items():
        lines.append(f"| perplexity ({lang}) | perplexity | {r['perplexity']:.2f} | {r.get('vocab_size', '-')} "
                     f"(uniform) | - | {r['tokens']} tokens |")
    for family, r in result.get("zero_shot", {}).items():
        lines.append(f"| teacher signal ({family}) | accuracy | {_pct(r['accuracy'])} | "
                     f"{_pct(r['majority_baseline'])} (majority) | - | {r['samples']} |")
    iq = result.get("iq")
    if iq:
        for name, r in iq["subtests"].items():
            metric = "accuracy" if r["baseline_kind"].startswith("uniform") else "exact match"
            lines.append(f"| {name} | {metric} | {_pct(r['score'])} | {_pct(r['random_baseline'])} | "
                         f"{_pct(r['paper_flm101b'])} ({r['paper_column']}) | {r['items']} |")
        for family, r in iq["families"].items():
            for column, c in r["columns"].items():
                if column != family:
                    lines.append(f"| {family}: {column} | mean | {_pct(c['score'])} | {_pct(c['random_baseline'])} "
                                 f"| {_pct(c['paper_flm101b'])} | |")
            lines.append(f"| **{family}** | mean | {_pct(r['score'])} | {_pct(r['random_baseline'])} | "
                         f"{_pct(r['paper_flm101b'])} | |")
    for name, r in result.get("lm_eval", {}).get("tasks", {}).items():
        lines.append(f"| {name} | {r['metric']} | {_pct(r['score'])} | {_pct(r['random_baseline'])} | "
                     f"{paper.figure(name)} | {r.get('items', '-')} |")
    for name, line in result.get("lm_eval", {}).get("missing", {}).items():
        lines.append(f"| {name} | - | missing data | - | {paper.figure(name)} | |")
    if "perplexity_by_length" in result:
        from flm_ext.evaluation.lengths import markdown

        block = result.get("blockwise_attention_block")
        title = "Perplexity by length" + (f" (blockwise causal attention, block {block})" if block else "")
        lines += ["", markdown(result["perplexity_by_length"], title)]
    return "\n".join(lines)


def perplexity_results(logits_fn, tokenizer, valid_files: dict, training_length: int, lengths, max_tokens: int,
                       batch_size: int) -> dict:
    """{"languages": per-language perplexity at the training length} and, with `lengths`,
    {"perplexity_by_length": ...} (flm_ext/evaluation/lengths.py); the training-length figures are
    read off the by-length run when it includes the training length."""
    out: dict = {}
    by_length: dict = {}
    if lengths:
        from flm_ext.evaluation.lengths import perplexity_by_length, resolve

        out["perplexity_by_length"] = perplexity_by_length(
            logits_fn, tokenizer, valid_files, resolve(lengths, training_length), training_length,
            max_tokens=max_tokens, batch_size=batch_size, progress=say)
        by_length = out["perplexity_by_length"]["languages"]
    languages = {}
    for lang, path in valid_files.items():
        at_train = by_length.get(lang, {}).get(str(training_length))
        if at_train is None:
            from flm_ext.evaluation.core import read_stream, token_nll, windows

            nll = token_nll(logits_fn, windows(read_stream(tokenizer, path, max_tokens), training_length, path),
                            batch_size)
            at_train = {"loss": nll.mean().item(), "perplexity": math.exp(nll.mean().item()), "tokens": nll.numel()}
        r = {k: at_train[k] for k in ("loss", "perplexity", "tokens")}
        languages[lang] = dict(r, vocab_size=tokenizer.vocab_size)
    out["languages"] = languages
    return out


def evaluate_export(folder: str, tokenizer, tasks: list[str], *, valid_files: dict, lengths=None,
                    blockwise_block: int | None = None, max_eval_tokens: int = 200_000, batch_size: int = 8) -> dict:
    """Perplexity (and by length) of an exported transformers folder: the export's own model code,
    loaded as users load it; `blockwise_block` sets its config's blockwise attention."""
    from flm_ext.evaluation.lengths import export_logits_fn
    from flm_ext.export.generation import load_hf_model

    if tasks != ["perplexity"]:
        raise KeyError(f"--load {folder} is an exported model: only --tasks perplexity runs on it here "
                       f"(lm-eval's own hf backend evaluates exports on other tasks)")
    model, _ = load_hf_model(folder)
    training_length = model.config.max_position_embeddings
    result = {"export": folder}
    if blockwise_block is not None:
        model.config.blockwise_attention = True
        model.config.blockwise_block_size = blockwise_block or None
        result["blockwise_attention_block"] = blockwise_block or max(1, training_length // 2)
    logits_fn = export_logits_fn(model)

    result.update(perplexity_results(logits_fn, tokenizer, valid_files, training_length, lengths, max_eval_tokens,
                                     batch_size))
    result["table"] = markdown_table(result)
    return result


def lm_eval_rows(results: dict, loaded: dict, limit: int | None) -> dict:
    rows = {}
    for name, task_dict in loaded.items():
        row = results.get(name)
        if not row:
            continue
        preferred = paper.KNOWLEDGE.get(name, (None, None))[1]
        found = score_of(row, preferred)
        if found is None:
            continue
        metric, value = found
        base = _choice_baseline(task_dict["tasks"], limit) if metric.split(",")[0] in ("acc", "acc_norm") else None
        if name == "truthfulqa_mc2":
            base = None  # mc2 is a probability mass, not an argmax over choices
        rows[name] = {"metric": metric, "score": value, "random_baseline": base,
                      "items": row.get("sample_len") or sum(v for v in (row.get("sample_count") or {}).values())}
    return rows


def _simple_evaluate(lm, tm, names: list[str], limit, num_fewshot) -> dict:
    import lm_eval

    out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                                  log_samples=False, bootstrap_iters=0, verbosity=None)
    return out["results"] if out else {}


def run_lm_eval(lm, iq_names: list[str], other: list[str], include_paths: list[str], limit, num_fewshot,
                progress) -> tuple[dict, dict, dict]:
    """Run IQ tasks (their shots are in the prompts: never extra ones) and other lm-eval tasks
    (--num-fewshot, else the paper's shot count where it reports the task, else the task's own).
    Returns (raw results, loaded task dicts, missing-data lines)."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    tm, loaded, missing = load_lm_eval_tasks(iq_names + other, include_paths)
    results: dict = {}
    runnable_iq = [n for n in iq_names if n in loaded]
    if runnable_iq:
        results.update(_simple_evaluate(lm, tm, runnable_iq, limit, None))
        progress.update(1, "iq")
    for name in (n for n in other if n in loaded):
        shots = num_fewshot if num_fewshot is not None else paper.KNOWLEDGE.get(name, (None, None, None))[2]
        results.update(_simple_evaluate(lm, tm, [name], limit, shots))
        progress.update(1, name)
    return results, loaded, missing


def evaluate_checkpoint(load: str, tokenizer, tasks: list[str], *, valid_files: dict, teacher_file: str | None,
                        max_teacher_samples: int = 1000, iq_dir: str | None = None, iq_seed: int = 1234,
                        iq_n: int = 100, iq_langs=suite.LANGS, include_paths=(), limit: int | None = None,
                        num_fewshot: int | None = None, batch_size: int = 8, workdir: str | None = None,
                        lengths=None, blockwise_block: int | None = None, max_eval_tokens: int = 200_000) -> dict:
    """Load the checkpoint once and run every requested task on it; the results dict holds the
    markdown table under "table". `lengths` (parsed --lengths) adds perplexity by length and
    position bucket; `blockwise_block` (0: half the training length) switches blockwise causal
    attention on for every task."""
    from flm_ext.config import describe
    from flm_ext.checkpoint import check_tokenizer
    from flm_ext.evaluation.core import load_model, zero_shot_accuracy
    from flm_ext.progress import Progress

    ours, iq_names, other = split_tasks(tasks)
    stages = len(ours) + bool(iq_names) + len(other)
    if other:  # an unknown lm-eval task name stops here, before the checkpoint is loaded
        task_manager(other, list(include_paths))
    progress = Progress(stages + 1, "evaluate", unit="stages", interval=0.0)
    model, config, common = load_model(load)
    check_tokenizer(common, tokenizer, load)
    progress.update(1, f"loaded {load} (iteration {common['iteration']})")
    result = {"checkpoint": load, "iteration": common["iteration"], "model": describe(config)}
    if blockwise_block is not None:
        from flm_ext.model.blockwise import default_block, set_blockwise_attention

        block = blockwise_block or default_block(config.seq_length)
        set_blockwise_attention(model, block)
        result["blockwise_attention_block"] = block
    if "perplexity" in ours:
        from flm_ext.evaluation.core import model_logits_fn

        result.update(perplexity_results(model_logits_fn(model), tokenizer, valid_files, config.seq_length, lengths,
                                         max_eval_tokens, batch_size))
        progress.update(1, "perplexity")
    if "teacher" in ours:
        result["zero_shot"] = zero_shot_accuracy(model, config, tokenizer, teacher_file, max_teacher_samples)
        progress.update(1, "teacher signal")
    if iq_names or other:
        from flm_ext.evaluation.backend import FLMLM

        folder = iq_suite(iq_dir, iq_seed, iq_n, iq_langs, workdir) if iq_names else None
        includes = ([folder] if folder else []) + list(include_paths)
        lm = FLMLM(load=load, model=model, tokenizer=tokenizer, config=config, batch_size=batch_size)
        raw, loaded, missing = run_lm_eval(lm, iq_names, other, includes, limit, num_fewshot, progress)
        if iq_names:
            result["iq"] = iq_rows(raw, folder, limit)
        result["lm_eval"] = {"tasks": lm_eval_rows(raw, {n: loaded[n] for n in other if n in loaded}, limit),
                             "missing": missing}
    result["table"] = markdown_table(result)
    return result
