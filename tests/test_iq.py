"""The IQ suite: deterministic generation, one answer per item (checked by independent solvers,
which also refuse ambiguous items), and lm-eval's own pipeline scoring a solver-driven oracle at
100% and a constant answer at the reported random baseline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from flm_ext.evaluation.iq import solvers, suite

REPO = Path(__file__).resolve().parents[1]
N = 12  # a multiple of every choice count (2 and 4): balanced gold positions make chance exact
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("iq") / "suite"
    suite.write_suite(str(out), seed=7, n=N)
    return out


def test_same_seed_gives_byte_identical_files(suite_dir, tmp_path):
    again = tmp_path / "again"
    suite.write_suite(str(again), seed=7, n=N)
    names = sorted(os.listdir(suite_dir))
    assert names == sorted(os.listdir(again)) and len(names) == 2 * len(suite.SUBTESTS) + 6
    for name in names:
        a, b = (suite_dir / name).read_bytes(), (again / name).read_bytes()
        if name.endswith(".yaml"):  # data_files are absolute paths into each folder
            a = a.replace(str(suite_dir).encode(), b"DIR")
            b = b.replace(str(again).encode(), b"DIR")
        assert a == b, name
    other = tmp_path / "other"  # the same seed, English only
    suite.write_suite(str(other), seed=7, n=N, langs=("en",))
    assert not (other / "iq_counting_zh.jsonl").exists()
    # a sub-test's items do not depend on which others were generated
    assert (other / "iq_head_tail.jsonl").read_bytes() == (suite_dir / "iq_head_tail.jsonl").read_bytes()
    test = suite.BY_NAME["iq_counting_en"]
    assert suite.generate(test, seed=8, n=N) != suite.generate(test, seed=7, n=N)


def test_every_item_has_one_solver_answer_at_the_papers_size():
    """100 items per sub-test (the paper's count), each checked by its solver; the choices hold the
    answer once and the answers are balanced as the baselines assume."""
    for test in suite.SUBTESTS:
        docs = suite.generate(test, seed=1, n=100)  # raises on any solver disagreement
        assert len(docs) == 100
        if test.output == "choice":
            k = len(docs[0]["choices"])
            assert all(len(set(d["choices"])) == len(d["choices"]) == k for d in docs), test.name
            assert Counter(d["gold"] for d in docs) == {g: 100 // k for g in range(k)}, test.name
            assert suite.baseline(test, docs)["random_baseline"] == pytest.approx(1 / k)
        assert len({d["prompt"] for d in docs}) > 90, test.name  # not one item repeated


# Hand-written prompts with answers worked out by hand: the solvers against an independent reference.
HAND = [
    ("counting", "en", 'How many times does the word "fig" appear in this list?\nfig, pear, fig, fig, plum\nAnswer:',
     {}, "3"),
    ("counting", "zh", "下面的列表中“梨”出现了几次？\n梨、苹果、桃子\n答案：", {}, "1"),
    ("replace_lowercase", "en", "Input: aB1\nOutput: #B1\n\nInput: Qrs\nOutput: Q##\n\nInput: xY\nOutput:", {}, "#Y"),
    ("replace_word", "en", "Input: I saw a cat.\nOutput: I saw a dog.\n\nInput: The cat sat.\nOutput:", {},
     "The dog sat."),
    ("head_tail", "", "Input: a b c d\nOutput: a d\n\nInput: e f g h i\nOutput: e i\n\nInput: k l m n\nOutput:", {},
     "k n"),
    ("full_repeating", "", "Input: a b c d\nOutput: a b c d a b c d\n\nInput: x y z w\nOutput:", {},
     "x y z w x y z w"),
    ("head_slicing", "", "Input: a b c d e\nOutput: a b c\n\nInput: p q r s t u\nOutput:", {}, "p q r"),
    ("single_fact", "en", "Anna went to the kitchen.\nThe number 12 was written on a red card.\nBen moved to the "
     "garden.\nAnna travelled to the office.\nQuestion: Where is Anna?\nAnswer:", {}, "office"),
    ("two_facts", "en", "Anna went to the kitchen.\nAnna picked up the milk.\nAnna moved to the garden.\n"
     "Question: Where is the milk?\nAnswer:", {}, "garden"),
    ("two_facts", "en", "Ben went to the cellar.\nBen got the key.\nBen dropped the key.\nBen moved to the office.\n"
     "Question: Where is the key?\nAnswer:", {}, "cellar"),
    ("two_facts", "zh", "小明去了厨房。\n小明拿起了苹果。\n小明走到了花园。\n问题： 苹果在哪里？\n答案：", {}, "花园"),
    ("multikey", "en", "The passcode for door K7 is 4821.\nThe passcode for door A2 is 1111.\n"
     "Question: What is the passcode for door A2?\nAnswer:", {}, "1111"),
    ("symbolic_nli", "en", "Premise: Anna is taller than Ben. Ben is taller than Carl.\nHypothesis: Anna is taller "
     "than Carl.\nAnswer: ⟟⧖\n\nPremise: Dora is older than Emil. Emil is older than Fay.\nHypothesis: Fay is "
     "older than Dora.\nAnswer: ⨳⩫\n\nPremise: Gus is faster than Hana. Hana is faster than Ivan.\nHypothesis: "
     "Ivan is faster than Hana.\nAnswer:", {}, "⨳⩫"),
    ("symbolic_boolq", "en", "Passage: The red box holds 3 coins. The blue box holds 9 coins.\nQuestion: Does the "
     "blue box hold more coins than the red box?\nAnswer: ⬲⭍\n\nPassage: The red box holds 5 coins. The green box "
     "holds 2 coins.\nQuestion: Does the green box hold more coins than the red box?\nAnswer: ⯑⸎\n\nPassage: The "
     "white box holds 4 coins. The black box holds 1 coins.\nQuestion: Does the white box hold more coins than the "
     "black box?\nAnswer:", {}, "⬲⭍"),
    ("symbolic_sentiment", "zh", "评论： 很好\n答案： ⦻⧗\n\n评论： 很差\n答案： ⨷⩨\n\n评论： 不错\n答案：",
     {"demo_labels": [0, 1], "label": 0}, "⦻⧗"),
]


@pytest.mark.parametrize("kind, lang, prompt, meta, answer", HAND, ids=[f"{h[0]}_{h[1]}" for h in HAND])
def test_solvers_on_hand_worked_items(kind, lang, prompt, meta, answer):
    test = suite.BY_NAME[f"iq_{kind}" + (f"_{lang}" if lang else "")]  # the solver registered with the sub-test
    assert test.solve(prompt, lang or "en", meta) == answer


@pytest.mark.parametrize("kind, prompt, meta", [
    # demonstrations that fit two rules (head & tail = head slicing 2 on two-element lists)
    ("head_tail", "Input: a b\nOutput: a b\n\nInput: c d\nOutput: c d\n\nInput: e f g\nOutput:", {}),
    # two different words changed
    ("replace_word", "Input: I saw a cat.\nOutput: I saw a dog.\n\nInput: A cow ran.\nOutput: A hen ran.\n\n"
     "Input: The cat sat.\nOutput:", {}),
    # one class shown with two symbols
    ("symbolic_sentiment", "评论： 好\n答案： ⦻⧗\n\n评论： 棒\n答案： ⨷⩨\n\n评论： 行\n答案：",
     {"demo_labels": [0, 0], "label": 0}),
    # a person never placed
    ("single_fact", "Anna went to the kitchen.\nQuestion: Where is Ben?\nAnswer:", {}),
])
def test_solvers_refuse_ambiguous_items(kind, prompt, meta):
    lang = "zh" if kind == "symbolic_sentiment" else "en"
    test = suite.BY_NAME[f"iq_{kind}" + ("" if kind == "head_tail" else f"_{lang}")]
    with pytest.raises(solvers.Ambiguous):
        test.solve(prompt, lang, meta)


def test_a_wrong_stored_answer_is_caught():
    test = suite.BY_NAME["iq_counting_en"]
    doc = suite.generate(test, seed=3, n=1)[0]
    with pytest.raises(AssertionError, match="solver says"):
        suite.check(test, {**doc, "answer": str(int(doc["answer"]) + 1)})
    test = suite.BY_NAME["iq_single_fact_en"]
    doc = suite.generate(test, seed=3, n=1)[0]
    with pytest.raises(AssertionError, match="exactly one"):
        suite.check(test, {**doc, "choices": doc["choices"] + [doc["choices"][doc["gold"]]]})


def _run(model, suite_dir, tasks):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(suite_dir), include_defaults=False)
    return lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=tm, log_samples=False,
                                   bootstrap_iters=0)["results"]


def _score(row):
    return next(float(v) for k, v in row.items() if k in ("acc,none", "exact_match,strip"))


def test_oracle_scores_100_and_a_constant_answer_the_baseline_through_lm_eval(suite_dir):
    from flm_ext.evaluation.iq.oracle import ConstantLM, OracleLM

    results = _run(OracleLM(), suite_dir, ["iq"])
    for test in suite.SUBTESTS:
        assert _score(results[test.name]) == 1.0, test.name
    for family in suite.FAMILIES:
        assert _score(results[f"iq_{family}"]) == 1.0, family

    manifest = json.loads((suite_dir / "manifest.json").read_text())

    class PerTaskConstant(ConstantLM):
        """The same text for every item of a sub-test: its commonest answer, counted here from the jsonl."""

        def generate_until(self, requests, disable_tqdm=False):
            return [Counter(d["answer"] for d in suite.read_docs(str(suite_dir), r.task_name)).most_common(1)[0][0]
                    for r in requests]

    results = _run(PerTaskConstant(), suite_dir, ["iq"])
    for test in suite.SUBTESTS:
        assert _score(results[test.name]) == pytest.approx(manifest["subtests"][test.name]["random_baseline"]), \
            test.name


def test_make_iq_tasks_cli(tmp_path):
    tool = [sys.executable, str(REPO / "tools" / "make_iq_tasks.py")]
    out = tmp_path / "suite"
    proc = subprocess.run(tool + ["--out", str(out), "--n", "4", "--lang", "en", "--seed", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "iq_counting_en" in proc.stdout and "random baseline" in proc.stdout
    assert json.loads((out / "manifest.json").read_text())["n"] == 4
    for args, flag in [(["--out", str(out)], "--out"), (["--out", str(tmp_path / "x"), "--lang", "fr"], "--lang"),
                       (["--out", str(tmp_path / "y"), "--n", "0"], "--n")]:
        proc = subprocess.run(tool + args, capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(f"make_iq_tasks.py: error: {flag}")


def test_a_missing_family_shows_as_a_table_row(tmp_path):
    """A family whose data files are gone is said once and kept in the results table as a
    'missing data' row naming it, beside the families that did run (the oracle scores them 100%)."""
    from flm_ext.evaluation.iq.oracle import OracleLM
    from flm_ext.evaluation.runner import markdown_table
    from flm_ext.evaluation.tasks import Context, iq

    folder = tmp_path / "suite"
    suite.write_suite(str(folder), seed=7, n=4, langs=("en",))
    for test in suite.SUBTESTS:
        if test.family == "symbolic_mapping" and (folder / f"{test.name}.jsonl").exists():
            (folder / f"{test.name}.jsonl").unlink()
    said = []
    ctx = Context(load="-", tokenizer=None, logits_fn=None, training_length=0, iq_dir=str(folder),
                  iq_langs=("en",), say=said.append, _lm=OracleLM())
    result = iq.run(ctx, ["iq_symbolic_mapping", "iq_rule_understanding"])
    assert list(result["iq"]["missing"]) == ["iq_symbolic_mapping"]
    assert [line.split(":")[0] for line in said] == ["iq_symbolic_mapping"]
    lines = markdown_table(result).splitlines()
    assert "| iq_symbolic_mapping | - | missing data | - | - | |" in lines
    assert "| **rule_understanding** | mean | 100.00 | 25.00 | 76.42 | |" in lines
    assert not any(r["family"] == "symbolic_mapping" for r in result["iq"]["subtests"].values())
