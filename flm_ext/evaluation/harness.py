"""lm-eval glue shared by the IQ task and any lm-eval task name: finding and loading tasks (a task
whose data set is not on this machine is reported in one line and skipped), running them on our
lm-eval model, and reading one score and a random baseline off lm-eval's result rows."""
from __future__ import annotations

from statistics import mean

from flm_ext.evaluation import paper


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

    from flm_ext.evaluation import tasks

    tm = TaskManager(include_path=include_paths or None, include_defaults=not include_paths)
    if include_paths and any(name not in tm.all_tasks for name in names):
        tm = TaskManager(include_path=include_paths, include_defaults=True)
    for name in names:
        if name not in tm.all_tasks:
            raise KeyError(f"--tasks {name}: no such task (ours: {', '.join(t.name for t in tasks.tasks())}, "
                           f"and their parts such as iq_<family>; or an lm-eval task name)")
    return tm


def load_tasks(names: list[str], include_paths: list[str], say):
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


def simple_evaluate(lm, tm, names: list[str], limit, num_fewshot) -> dict:
    import lm_eval

    if not names:
        return {}
    out = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
                                  log_samples=False, bootstrap_iters=0, verbosity=None)
    return out["results"] if out else {}


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


def run_lm_eval(lm, names: list[str], include_paths: list[str], limit, num_fewshot, progress, say) -> dict:
    """Any lm-eval tasks, each at --num-fewshot, else the paper's shot count where it reports the
    task, else the task's own: {"tasks": score rows, "missing": missing-data lines}."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    tm, loaded, missing = load_tasks(names, include_paths, say)
    results: dict = {}
    for name in (n for n in names if n in loaded):
        shots = num_fewshot if num_fewshot is not None else paper.KNOWLEDGE.get(name, (None, None, None))[2]
        results.update(simple_evaluate(lm, tm, [name], limit, shots))
        progress.update(1, name)
    return {"tasks": lm_eval_rows(results, loaded, limit), "missing": missing}


def rows(result: dict) -> list[str]:
    """The table rows of lm-eval tasks (scored and missing)."""
    from flm_ext.evaluation.tasks import pct

    scored, missing = result.get("lm_eval", {}).get("tasks", {}), result.get("lm_eval", {}).get("missing", {})
    out = [f"| {name} | {r['metric']} | {pct(r['score'])} | {pct(r['random_baseline'])} | "
           f"{paper.figure(name)} | {r.get('items', '-')} |" for name, r in scored.items()]
    return out + [missing_row(name) for name in missing]


def missing_row(name: str) -> str:
    """The table row of a task whose data is not on this machine (its line says what to fetch)."""
    return f"| {name} | - | missing data | - | {paper.figure(name)} | |"
