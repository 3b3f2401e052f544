"""The two evaluation registries: a task (flm_ext/evaluation/tasks) and an IQ sub-test kind
(iq.suite.register) are each added by one registration, and everything that lists tasks or
sub-tests (the names --tasks accepts, the suite's files and groups, the results table, the CLI's
checks) follows with no other edit. docs/extending.md runs a whole task end to end
(tests/test_extending.py); here: the routing, the table and the refusals."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from flm_ext.evaluation import tasks
from flm_ext.evaluation.iq import suite

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_registries():
    """Registrations made by a test are undone after it."""
    saved_tasks = dict(tasks._REGISTRY)
    saved_subtests, saved_by_name = list(suite.SUBTESTS), dict(suite.BY_NAME)
    yield
    tasks._REGISTRY.clear()
    tasks._REGISTRY.update(saved_tasks)
    suite.SUBTESTS[:] = saved_subtests
    suite.BY_NAME.clear()
    suite.BY_NAME.update(saved_by_name)


def _echo_items(rng, n, lang):
    """A toy kind: repeat a word (answers from a list the solver never sees)."""
    words = ["fig", "pear", "plum", "kiwi"] if lang == "en" else ["梨", "桃", "李", "杏"]
    return [{"prompt": f"Repeat: {words[i % 4]}\nAnswer:", "answer": words[i % 4], "meta": {}} for i in range(n)]


def _echo_solve(prompt, lang, meta=None):
    return prompt.split("\n")[0].removeprefix("Repeat: ")


def test_an_iq_kind_is_one_registration(restore_registries, tmp_path):
    before = len(suite.SUBTESTS)
    added = suite.register("echo", "rule_understanding", "generate", 0, _echo_items, _echo_solve,
                           {"en": "counting", "zh": "counting"})
    assert [t.name for t in added] == ["iq_echo_en", "iq_echo_zh"] and len(suite.SUBTESTS) == before + 2
    # --tasks names: the iq task answers the new sub-tests, nothing else routes them
    assert tasks.find("iq_echo_zh").name == "iq"
    assert tasks.split(["iq_echo_en", "arc_easy"])[1] == ["arc_easy"]
    # the suite on disk: its jsonl (checked against its solver), its task YAML, its family's group
    suite.write_suite(str(tmp_path / "iq"), seed=3, n=8)
    docs = suite.read_docs(str(tmp_path / "iq"), "iq_echo_en")
    assert [d["answer"] for d in docs] == ["fig", "pear", "plum", "kiwi"] * 2
    group = yaml.safe_load((tmp_path / "iq" / "iq_rule_understanding.yaml").read_text())
    assert {"iq_echo_en", "iq_echo_zh"} <= set(group["task"])
    manifest = json.loads((tmp_path / "iq" / "manifest.json").read_text())
    assert manifest["subtests"]["iq_echo_zh"]["random_baseline"] == pytest.approx(2 / 8)  # commonest answer


def test_iq_registration_refusals(restore_registries):
    with pytest.raises(ValueError, match="registered twice"):
        suite.register("counting", "rule_understanding", "generate", 0, _echo_items, _echo_solve, {"en": "counting"})
    with pytest.raises(ValueError, match="family"):
        suite.register("echo", "memory", "generate", 0, _echo_items, _echo_solve, {"en": "counting"})
    with pytest.raises(ValueError, match="paper column"):
        suite.register("echo", "rule_understanding", "generate", 0, _echo_items, _echo_solve, {"en": "no_such"})


def test_a_generator_whose_solver_disagrees_is_caught(restore_registries):
    wrong = lambda prompt, lang, meta=None: "banana"  # noqa: E731
    (test,) = suite.register("echo", "rule_understanding", "generate", 0, _echo_items, wrong, {"en": "counting"})
    with pytest.raises(AssertionError, match="solver says 'banana'"):
        suite.generate(test, seed=1, n=2)


def _toy_task(name="toy", **kw):
    def run(ctx, names):
        return {"toy": {"value": 0.25, "asked": names}}

    def rows(result):
        r = result.get("toy")
        return [f"| toy | share | {tasks.pct(r['value'])} | - | - | 1 |"] if r else []

    return tasks.Task(name, "model", "share", "a toy", run, rows, **kw)


def test_routing_follows_the_registry(restore_registries):
    ours, other = tasks.split(["hellaswag", "iq_counting_en", "perplexity", "iq", "iq_counting_en"])
    assert [(t.name, asked) for t, asked in ours] == [("perplexity", ["perplexity"]), ("iq", ["iq_counting_en", "iq"])]
    assert other == ["hellaswag"]
    tasks.register(_toy_task(needs=(("--teacher-data", "FILE"),), default=True))
    assert tasks.find("toy").name == "toy" and tasks.split(["toy"])[1] == []
    given = {"--valid-data"}
    assert tasks.defaults(lambda flag: flag in given) == ["perplexity"]
    given.add("--teacher-data")
    assert tasks.defaults(lambda flag: flag in given) == ["perplexity", "teacher", "toy"]
    assert "  toy" in tasks.summary() and "needs --teacher-data FILE" in tasks.summary()


def test_the_table_shows_every_registered_task(restore_registries):
    from flm_ext.evaluation.runner import markdown_table

    tasks.register(_toy_task())
    table = markdown_table({"toy": {"value": 0.25}, "languages": {"en": {"perplexity": 12.5, "tokens": 640}}})
    lines = table.splitlines()
    assert "| toy | share | 25.00 | - | - | 1 |" in lines
    assert lines.index("| perplexity (en) | perplexity | 12.50 | - (uniform) | - | 640 tokens |") < lines.index(
        "| toy | share | 25.00 | - | - | 1 |")  # registration order
    assert "toy" not in markdown_table({})


def test_task_registration_refusals(restore_registries):
    with pytest.raises(ValueError, match="already registered"):
        tasks.register(_toy_task("perplexity"))
    with pytest.raises(ValueError, match="already registered"):
        tasks.register(_toy_task(parts=("iq_counting_en",)))
    with pytest.raises(ValueError, match="kind"):
        tasks.register(tasks.Task("toy", "remote", "x", "x", lambda c, n: {}, lambda r: []))


def test_reading_the_registry_needs_no_torch():
    """The CLI reads the registry before its checks: that must stay quick (no torch, no lm-eval)."""
    import subprocess

    code = "import sys, flm_ext.evaluation.tasks as t; t.find('iq'); print('torch' in sys.modules, 'lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.split() == ["False", "False"], out.stderr
