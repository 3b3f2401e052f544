"""Our evaluation tasks, looked up by name (`tools/evaluate.py --tasks`).

A task is one module here that builds a `Task` (its name, what it runs on, its metric, where the
paper reports it, the flags it needs, how it runs and how it shows in the results table) and calls
`register` at its end; an import at the bottom of this file registers it (docs/extending.md has a
worked example). Everything that lists tasks reads this registry: the CLI's checks and help, the
runner and the results table. A `--tasks` name that no task answers is handed to lm-eval.

Importing this package is light (no torch, no lm-eval): a task imports what it needs when it runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

KINDS = ("model", "lm-eval")


@dataclass(frozen=True)
class Task:
    name: str                 # the --tasks name
    kind: str                 # "model": scored here from the model's logits; "lm-eval": requests through lm-eval
    metric: str               # what the score is (the table's metric column)
    description: str          # one line, for --help and docs
    run: Callable[["Context", list[str]], dict]  # (context, the asked names) -> entries of the results dict
    rows: Callable[[dict], list[str]]            # results dict -> its rows of the markdown table ([] if absent)
    paper: str = "-"          # where the FLM paper reports it
    needs: tuple[tuple[str, str], ...] = ()      # (flag, metavar) of the inputs it reads, e.g. --valid-data
    default: bool = False     # run without --tasks when every input it needs is given
    on_export: bool = False   # also runs on an exported transformers folder (logits_fn only, no config)
    parts: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()  # further --tasks names it answers (subsets)
    appendix: Callable[[dict], str | None] | None = None  # a block below the table (e.g. a second table)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *(self.parts() if callable(self.parts) else self.parts))


@dataclass
class Context:
    """What a task runs on: one loaded model (a training checkpoint at TP=1, or an export) and the
    evaluation's settings. `logits_fn(ids [b, s]) -> [b, s, vocab]` works for both."""
    load: str
    tokenizer: Any
    logits_fn: Callable
    training_length: int
    model: Any = None         # the megatron model (None for an export)
    config: Any = None        # its FLMConfig (None for an export)
    valid_files: dict = field(default_factory=dict)
    teacher_file: str | None = None
    max_teacher_samples: int = 1000
    lengths: Any = None       # parsed --lengths
    max_eval_tokens: int = 200_000
    batch_size: int = 8
    iq_dir: str | None = None
    iq_seed: int = 1234
    iq_n: int = 100
    iq_langs: tuple = ("en", "zh")
    include_paths: tuple = ()
    limit: int | None = None
    num_fewshot: int | None = None
    workdir: str | None = None
    say: Callable[[str], None] = print
    progress: Any = None
    _lm: Any = None

    def lm(self):
        """The lm-eval model over this context's model (built once, on first use)."""
        if self._lm is None:
            from flm_ext.evaluation.backend import FLMLM

            self._lm = FLMLM(load=self.load, model=self.model, tokenizer=self.tokenizer, config=self.config,
                             batch_size=self.batch_size)
        return self._lm


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.kind not in KINDS:
        raise ValueError(f"evaluation task {task.name}: kind {task.kind!r} is not one of {KINDS}")
    taken = [n for n in task.names if find(n) is not None]
    if taken:
        raise ValueError(f"evaluation task {task.name}: {', '.join(taken)} already registered")
    _REGISTRY[task.name] = task
    return task


def tasks() -> tuple[Task, ...]:
    """Every registered task, in registration order (the order of the results table)."""
    return tuple(_REGISTRY.values())


def find(name: str) -> Task | None:
    """The task that answers `name` (its own name or one of its parts), None for lm-eval's names."""
    return next((t for t in _REGISTRY.values() if name in t.names), None)


def split(names: list[str]) -> tuple[list[tuple[Task, list[str]]], list[str]]:
    """([(task, the names asked of it)] in registry order, the other names for lm-eval in given order)."""
    asked: dict[str, list[str]] = {}
    for name in names:
        task = find(name)
        if task is not None and name not in asked.setdefault(task.name, []):
            asked[task.name].append(name)
    return [(t, asked[t.name]) for t in tasks() if t.name in asked], [n for n in names if find(n) is None]


def defaults(given: Callable[[str], bool]) -> list[str]:
    """The tasks run without --tasks: the default ones whose needed flags `given(flag)` are all set."""
    return [t.name for t in tasks() if t.default and t.needs and all(given(flag) for flag, _ in t.needs)]


def summary() -> str:
    """One line per task for --help: name, what it needs, what it reports."""
    lines = []
    for t in tasks():
        needs = " ".join(f"{flag} {metavar}" for flag, metavar in t.needs)
        lines.append(f"  {t.name:<11} {t.description}" + (f" (needs {needs})" if needs else ""))
    return "\n".join(lines)


def pct(x) -> str:
    """A share as a percentage for the table ("-" for none)."""
    return "-" if x is None else f"{100 * x:.2f}"


# The built-in tasks register themselves on import.
from flm_ext.evaluation.tasks import perplexity, teacher, iq  # noqa: E402,F401

__all__ = ["Task", "Context", "register", "tasks", "find", "split", "defaults", "summary", "pct"]
