"""The lm-eval backend `flm` on a checkpoint saved at PP=2: the same per-request log-likelihoods
and accuracy as lm-eval's own `hf` backend on the exported model, KV-cache generation equal to
recomputed generation, the lm-eval CLI wrapper, and tools/evaluate.py end to end (with a task
whose data is missing)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distributed import spawn
from evaluation_workers import save_checkpoint_worker, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
os.environ.update(OFFLINE)
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
TASKS = ["iq_symbolic_nli_en", "iq_symbolic_sentiment_zh", "iq_multikey_zh", "iq_two_facts_en"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 600-token BPE, a random tiny model saved at PP=2, its transformers export, an IQ suite."""
    from flm_ext.config import pad_vocab_size
    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.evaluation.iq import suite

    out = tmp_path_factory.mktemp("backend")
    bpe = train_tokenizer(str(out))
    vocab = pad_vocab_size(build_tokenizer("HuggingFaceTokenizer", tokenizer_model=bpe).vocab_size, 2)
    spawn(save_checkpoint_worker, 2, out, 1, 2, vocab)
    ckpt, export = out / "ckpt", out / "hf"
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", bpe]
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "export_hf.py"), "--load", str(ckpt), "--save",
                           str(export), *tok], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    suite.write_suite(str(out / "iq"), seed=5, n=8)
    return {"out": out, "ckpt": str(ckpt), "export": str(export), "bpe": bpe, "tok": tok, "iq": str(out / "iq")}


@pytest.fixture(scope="module")
def flm_lm(run, megatron_single_process):
    from flm_ext.evaluation.backend import FLMLM

    return FLMLM(load=run["ckpt"], tokenizer_model=run["bpe"], batch_size=4)


def _evaluate(lm, run, tasks, limit=None):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=run["iq"], include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit, log_samples=True,
                                   bootstrap_iters=0)


def test_flm_and_hf_backends_agree_per_request(run, flm_lm):
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=run["export"], trust_remote_code=True, dtype="float32", batch_size=4,
              max_length=flm_lm.max_length, device="cpu")
    ours, theirs = _evaluate(flm_lm, run, TASKS), _evaluate(hf, run, TASKS)
    compared = 0
    for task in TASKS:
        assert ours["results"][task]["acc,none"] == theirs["results"][task]["acc,none"], task
        for a, b in zip(ours["samples"][task], theirs["samples"][task], strict=True):
            assert a["doc_id"] == b["doc_id"] and len(a["resps"]) == len(b["resps"]) >= 2
            for (la, ga), (lb, gb) in zip((r[0] for r in a["resps"]), (r[0] for r in b["resps"])):
                assert abs(float(la) - float(lb)) <= 1e-4, (task, a["doc_id"], la, lb)
                assert bool(ga) == bool(gb)
                compared += 1
    assert compared >= 8 * 2 * 2 + 8 * 4 * 2
    # the log-likelihoods are not all alike (a model near uniform would agree trivially)
    lls = [float(r[0][0]) for s in ours["samples"]["iq_multikey_zh"] for r in s["resps"]]
    assert max(lls) - min(lls) > 1.0


def test_rolling_log_likelihood_equals_the_per_token_sum(run, flm_lm):
    """loglikelihood_rolling over a text longer than two windows equals a per-token sum computed here:
    each block of max_length tokens predicted from the max_length tokens before its last one."""
    import torch
    from lm_eval.api.instance import Instance

    text = " ".join(f"item {i} of the list" for i in range(120))
    [got] = flm_lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    seq, size = [flm_lm.eot_token_id] + flm_lm.tok_encode(text), flm_lm.max_length
    assert len(seq) > 2 * size
    total = 0.0
    for begin in range(1, len(seq), size):
        end = min(begin + size, len(seq))
        low = max(0, end - 1 - size)
        x = torch.tensor([seq[low:end - 1]])
        with torch.no_grad():
            logits = flm_lm.model(x, torch.arange(x.shape[1])[None], None)[0].double()
        logp = torch.log_softmax(logits[:, :flm_lm.tokenizer.vocab_size], -1)  # real tokens, not padding
        total += sum(logp[t - 1 - low, seq[t]].item() for t in range(begin, end))
    assert got == pytest.approx(total, abs=1e-3)


def test_kv_cache_generation_equals_recomputed_generation(run, flm_lm):
    from flm_ext.evaluation.backend import FLMLM

    assert type(flm_lm.generator).__name__ == "CachedGenerator"
    recompute = FLMLM(model=flm_lm.model, tokenizer=flm_lm.tokenizer, config=flm_lm.config, generation="recompute")
    tasks = ["iq_counting_en", "iq_counting_zh"]  # short prompts of different lengths: left padding in a batch
    a, b = _evaluate(flm_lm, run, tasks, limit=6), _evaluate(recompute, run, tasks, limit=6)
    texts = [s["resps"] for t in tasks for s in a["samples"][t]]
    assert texts == [s["resps"] for t in tasks for s in b["samples"][t]]
    assert any(r[0][0] for r in texts)  # something was generated


def test_lm_eval_cli_wrapper_runs_the_flm_model(run, tmp_path):
    args = f"load={run['ckpt']},tokenizer_type=HuggingFaceTokenizer,tokenizer_model={run['bpe']}"
    proc = subprocess.run([sys.executable, "-m", "flm_ext.evaluation.lm_eval_cli", "--model", "flm", "--model_args",
                           args, "--tasks", "iq_multikey_en", "--include_path", run["iq"], "--limit", "4",
                           "--batch_size", "4",
                           "--output_path", str(tmp_path / "out")], capture_output=True, text=True, env=ENV,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result] = list((tmp_path / "out").rglob("results_*.json"))
    assert json.loads(result.read_text())["results"]["iq_multikey_en"]["acc,none"] in (0, 0.25, 0.5, 0.75, 1)


def _local_choice_task(folder: Path) -> None:
    """An lm-eval task on local files, as a user would write one for a downloaded benchmark."""
    folder.mkdir()
    docs = [{"q": f"{a} plus {b} is", "choices": [str(a + b), str(a + b + 1), str(a * b + 7)], "gold": 0}
            for a, b in ((1, 2), (3, 4), (2, 5))]
    (folder / "local.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "local_mc.yaml").write_text(
        "task: local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'local.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n")
    # a task whose data set would come from the hub (not cached here; offline)
    (folder / "hub_mc.yaml").write_text(
        "task: hub_mc\ndataset_path: allenai/ai2_arc\ndataset_name: ARC-Challenge\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: question\ndoc_to_choice: '{{choices.text}}'\n"
        "doc_to_target: 0\nmetric_list:\n  - metric: acc\n")


def test_evaluate_tool_end_to_end(run, tmp_path):
    """All of our task kinds, the whole IQ suite, an lm-eval task on local files and one whose data
    set is missing, in one run of the tool (task YAMLs from --iq-dir / --include-path only: lm-eval's
    own index is not needed, so it is not built)."""
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text("".join(json.dumps({"text": f"review {i}", "proposition": "这条评论是正面的。",
                                           "label": i % 2 == 0}) + "\n" for i in range(6)))
    valid = tmp_path / "en.jsonl"
    valid.write_text("".join(json.dumps({"text": f"Input: a b c {i}\nOutput: a c"}) + "\n" for i in range(80)))
    _local_choice_task(tmp_path / "local")
    out = tmp_path / "eval.json"
    cmd = [sys.executable, str(REPO / "tools" / "evaluate.py"), "--load", run["ckpt"], *run["tok"],
           "--tasks", "perplexity,teacher,iq,local_mc,hub_mc", "--valid-data", f"en={valid}",
           "--teacher-data", str(teacher), "--iq-dir", run["iq"], "--include-path", str(tmp_path / "local"),
           "--limit", "2", "--output", str(out), "--markdown", str(tmp_path / "eval.md")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.startswith("evaluate.py: loading")
    assert "ETA" in proc.stderr
    result = json.loads(out.read_text())
    assert result["languages"]["en"]["perplexity"] > 1 and result["zero_shot"]["all"]["samples"] == 6
    assert set(result["iq"]["subtests"]) == set(suite_names())
    assert all(r["items"] == 2 for r in result["iq"]["subtests"].values())
    assert result["iq"]["families"]["pattern_mining"]["paper_flm101b"] == pytest.approx(0.6467)
    local = result["lm_eval"]["tasks"]["local_mc"]
    assert local["metric"] == "acc,none" and local["random_baseline"] == pytest.approx(1 / 3) and local["items"] == 2
    missing = result["lm_eval"]["missing"]["hub_mc"]
    assert "allenai/ai2_arc (ARC-Challenge)" in missing and "--include-path" in missing and missing in proc.stderr
    table = (tmp_path / "eval.md").read_text()
    assert "| **pattern_mining** |" in table and "| hub_mc | - | missing data | - | - |" in table
    assert "| local_mc | acc,none |" in table


def test_table_puts_the_papers_figure_beside_a_knowledge_score():
    from flm_ext.evaluation.runner import markdown_table

    row = {"metric": "acc_norm,none", "score": 0.31, "random_baseline": 0.25, "items": 1172}
    table = markdown_table({"lm_eval": {"tasks": {"arc_challenge": row}, "missing": {}}})
    assert "| arc_challenge | acc_norm,none | 31.00 | 25.00 | 39.76 | 1172 |" in table.splitlines()


def suite_names() -> list[str]:
    from flm_ext.evaluation.iq import suite

    return [t.name for t in suite.SUBTESTS]


@pytest.mark.parametrize("args, flag", [
    (["--tasks", "perplexity"], "--tasks perplexity needs --valid-data"),
    (["--tasks", "iq", "--iq-dir", "/nonexistent"], "--iq-dir"),
    (["--valid-data", "en"], "--valid-data"),
    (["--valid-data", f"en={REPO / 'README.md'}", "--lengths", "2y"], "--lengths '2y'"),
    (["--valid-data", f"en={REPO / 'README.md'}", "--lengths", "1x,0x"], "--lengths '0x' must be positive"),
    (["--valid-data", f"en={REPO / 'README.md'}", "--blockwise-block-size", "8"],
     "--blockwise-block-size needs --blockwise-attention"),
    (["--valid-data", f"en={REPO / 'README.md'}", "--max-eval-tokens", "0"], "--max-eval-tokens 0 must be >= 1"),
])
def test_evaluate_tool_refuses_bad_flags_in_one_line(args, flag):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), "--load", str(REPO),
                           "--tokenizer-type", "GPT2BPETokenizer", *args], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"evaluate.py: error: {flag}")


def test_evaluate_tool_names_a_folder_without_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), "--load", str(tmp_path),
                           "--tokenizer-type", "GPT2BPETokenizer", "--tasks", "iq_counting_en"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"evaluate.py: --load {tmp_path}: ")
