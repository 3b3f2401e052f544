"""Bad training data, one row each: the run stops with one line naming the flag or file (exit 2, no
traceback, before any process group or model exists) instead of a traceback, a hang or silently
wrong training; or, for data that can be used, it is.

Rows run the real pretrain_flm.py (a subprocess, torchrun for TP=2) or tools/preprocess_data.py
where the process matters; the others call pretrain_flm's main() in this process (the checks run
before any process group is built, so nothing else happens in this process)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import tiny_data
from data_testutils import run_tool
from flm_ext.data.preprocess import PreprocessConfig, preprocess
from launchers import ENV, pretrain_main

pytestmark = pytest.mark.timeout(240)


def _preprocess(jsonl, prefix, tokenizer_type="HuggingFaceTokenizer", model=None, lines=None, teacher=False):
    """``prefix`` from the first ``lines`` lines of ``jsonl``; returns the dataset prefix."""
    src = jsonl
    if lines is not None:
        src = prefix + ".jsonl"
        with open(jsonl, encoding="utf-8") as f, open(src, "w", encoding="utf-8") as out:
            out.writelines(line for _, line in zip(range(lines), f))
    cfg = PreprocessConfig(input=src, output_prefix=prefix, tokenizer_type=tokenizer_type, tokenizer_model=model,
                           append_eod=True, teacher_signal=teacher, log_interval=1e9)
    preprocess(cfg)
    return prefix if teacher else cfg.output_path("text")


@pytest.fixture(scope="session")
def bad(data, tmp_path_factory):
    """Every faulty data set, built once from the tiny set."""
    d = tmp_path_factory.mktemp("bad_data")
    src = os.path.dirname(data["en"])
    en, teacher, bpe = os.path.join(src, "en.jsonl"), os.path.join(src, "teacher.jsonl"), data["tokenizer"]
    out = {"cl100k": _preprocess(en, str(d / "cl"), "CL100kTokenizer", lines=60)}
    out["no_sidecar"] = str(d / "nosidecar_text_document")
    for ext in (".bin", ".idx"):
        shutil.copy(out["cl100k"] + ext, out["no_sidecar"] + ext)
    out["tiny"] = _preprocess(en, str(d / "tiny"), model=bpe, lines=20)
    out["tiny_teacher"] = _preprocess(teacher, str(d / "tteacher"), model=bpe, lines=20, teacher=True)
    for name, ext, cut in (("cut_idx", ".idx", 8), ("cut_bin", ".bin", 10)):
        out[name] = str(d / f"{name}_text_document")
        for e in (".bin", ".idx", ".json"):
            shutil.copy(out["tiny"] + e, out[name] + e)
        with open(out[name] + ext, "r+b") as f:
            f.truncate(os.path.getsize(out[name] + ext) - cut)
    # The case: data made again with GPT-2 next to the sidecar of an older BPE run of the
    # same 60 documents (same document counts). "stale" keeps that sidecar's .bin fingerprint (of
    # the BPE .bin), "stale_old" is a sidecar from before fingerprints existed.
    bpe60 = _preprocess(en, str(d / "bpe60"), model=bpe, lines=60)
    gpt2 = _preprocess(en, str(d / "gpt2"), "GPT2BPETokenizer", lines=60)
    for name in ("stale", "stale_old"):
        out[name] = str(d / f"{name}_text_document")
        for ext in (".bin", ".idx"):
            shutil.copy(gpt2 + ext, out[name] + ext)
        with open(bpe60 + ".json", encoding="utf-8") as f:
            record = json.load(f)
        if name == "stale_old":
            del record["bin"]
        with open(out[name] + ".json", "w", encoding="utf-8") as f:
            json.dump(record, f)
    out["cache"] = str(d / "cache")
    return out


def _args(data, bad, data_path=None, **flags):
    """tiny_data's training flags, one step, with another --data-path when given."""
    flags = dict(dict(train_iters=1, lr_warmup_iters=0, data_cache_path=bad["cache"]), **flags)
    args = tiny_data.train_args(data, **flags)
    return ["--data-path", *data_path, *args[5:]] if data_path else args


def _in_process(data, bad, monkeypatch, capsys, data_path=None, **flags):
    monkeypatch.delenv("RANK", raising=False)
    capsys.readouterr()
    code = pretrain_main()(_args(data, bad, data_path, **flags))
    return code, capsys.readouterr().err


def _subprocess(data, bad, nproc=1, data_path=None, **flags):
    return tiny_data.run_stacks_on_timeout(tiny_data.command(nproc, _args(data, bad, data_path, **flags)), timeout=200,
                                           env=ENV)


def _preprocess_empty(data, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    r = run_tool("preprocess_data.py", "--input", tmp_path / "empty.jsonl", "--output-prefix", tmp_path / "o" / "x",
                 "--tokenizer-type", "GPT2BPETokenizer")
    assert not (tmp_path / "o").exists()  # nothing left behind, not even the folder
    return r.returncode, r.stderr


def _stale_index(data, tmp_path):
    """A prefix preprocessed again in place with fewer documents: the cached sample index must be
    rebuilt (megatron's key is the configuration only: before, IndexError: index ... out of bounds)."""
    from flm_ext.data.datasets import DataConfig, build_pretraining_datasets
    from flm_ext.data.tokenizers import build_tokenizer

    src = os.path.join(os.path.dirname(data["en"]), "en.jsonl")
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=data["tokenizer"])
    prefix = str(tmp_path / "re")

    def build(cache):
        cfg = DataConfig(data_path=[prefix + "_text_document"], split="90,10,0", data_cache_path=str(cache))
        train, _, _ = build_pretraining_datasets(cfg, tok, 64, 8, 400, 0, 0, seed=1)
        return [train[i]["tokens"].tolist() for i in range(len(train))]

    _preprocess(src, prefix, model=data["tokenizer"], lines=120)
    first = build(tmp_path / "cache")
    _preprocess(src, prefix, model=data["tokenizer"], lines=30)
    again = build(tmp_path / "cache")  # the same cache folder and configuration
    assert again == build(tmp_path / "fresh_cache") and again != first  # reference: a cache never used
    indices = len(os.listdir(tmp_path / "cache")) // len(os.listdir(tmp_path / "fresh_cache"))
    return 0, f"{len(again)} samples from {indices} indices"


def _tiny_default_split(data, tmp_path):
    """20 documents, --split 969,30,1: the test share rounds to 0 documents, which megatron looped
    on forever even for 0 test samples; now the unused splits are not built and train works."""
    from flm_ext.data.datasets import DataConfig, build_pretraining_datasets
    from flm_ext.data.tokenizers import build_tokenizer

    src = os.path.join(os.path.dirname(data["en"]), "en.jsonl")
    prefix = _preprocess(src, str(tmp_path / "t"), model=data["tokenizer"], lines=20)
    tok = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=data["tokenizer"])
    cfg = DataConfig(data_path=[prefix], data_cache_path=str(tmp_path / "cache"))
    train, valid, test = build_pretraining_datasets(cfg, tok, 64, 8, 64, 0, 0, seed=1)
    assert valid is None and test is None and train[63]["tokens"].shape == (64,)
    return 0, f"{len(train)} train samples"


# (row id, how: "in" (main() here) | "sub" (subprocess) | "tp2" (torchrun) | a callable, what to
# change (data_path key or list, flags), expected message fragment, expected exit code)
ROWS = [
    ("vocab_mismatch_tp1", "in", dict(data_path=["cl100k"]), "tokenized with CL100kTokenizer", 2),
    ("vocab_mismatch_tp2", "tp2", dict(data_path=["cl100k"], tensor_model_parallel_size=2),
     "but training uses HuggingFaceTokenizer (1024 tokens", 1),  # torchrun reports a failed worker as 1
    ("ids_outside_vocab_no_sidecar", "in", dict(data_path=["no_sidecar"]), "outside the model's vocabulary of 1024", 2),
    ("stale_sidecar_gpt2_ids_tp2", "tp2", dict(data_path=["stale"], tensor_model_parallel_size=2),
     "was written for another .bin (made again next to it?), so every id was checked", 1),
    ("stale_sidecar_gpt2_ids_tp1", "in", dict(data_path=["stale"]), "outside the model's vocabulary of 1024", 2),
    ("old_sidecar_gpt2_ids_tp1", "in", dict(data_path=["stale_old"]), "predates .bin fingerprints", 2),
    ("tiny_valid_split_empty", "sub", dict(data_path=["tiny"], split="98,2,0", eval_interval=1, eval_iters=1),
     "--split 98,2,0: the valid split of", 2),
    ("tiny_teacher_split_empty", "in", dict(teacher_data_path="tiny_teacher", split="98,2,0", eval_interval=1),
     "gets 0 of its 20 documents", 2),
    ("missing_data_path", "in", dict(data_path=["/nonexistent/en_text_document"]),
     "--data-path /nonexistent/en_text_document: no /nonexistent/en_text_document.idx", 2),
    ("prefix_without_suffix", "in", dict(data_path=["tiny_bare"]), "did you mean", 2),
    ("truncated_idx", "in", dict(data_path=["cut_idx"]), ".idx is truncated or corrupt", 2),
    ("truncated_bin", "in", dict(data_path=["cut_bin"]), ".bin is truncated", 2),
    ("missing_teacher_data_path", "in", dict(teacher_data_path="/nonexistent/t"),
     "--teacher-data-path /nonexistent/t: no /nonexistent/t_teacher_document.bin/.idx", 2),
    ("missing_tokenizer_model", "in", dict(tokenizer_model="/nonexistent/bpe.json"),
     "--tokenizer-model /nonexistent/bpe.json: no such file", 2),
    ("odd_blend", "in", dict(data_path=["0.5", "tiny", "0.5"]), "an odd number", 2),
    ("teacher_fraction_one", "in", dict(teacher_fraction=1.0), "--teacher-fraction 1.0: must be in [0, 1)", 2),
    ("teacher_fraction_negative", "in", dict(teacher_fraction=-0.1), "--teacher-fraction -0.1: must be in [0, 1)", 2),
    ("num_workers_negative", "in", dict(num_workers=-1), "--num-workers -1: must be >= 0", 2),
    ("empty_preprocess_input", _preprocess_empty, {}, "the file is empty", 2),
    ("stale_index_after_preprocessing_again", _stale_index, {}, "400 samples from 2 indices", 0),
    ("tiny_default_split_trains", _tiny_default_split, {}, "64 train samples", 0),
]


def _resolve(bad, change):
    change = dict(change)
    keys = dict(bad, tiny_bare=os.path.dirname(bad["tiny"]) + "/tiny")
    if "data_path" in change:
        change["data_path"] = [keys.get(x, x) for x in change["data_path"]]
    if change.get("teacher_data_path") in keys:
        change["teacher_data_path"] = keys[change["teacher_data_path"]]
    return change


@pytest.mark.parametrize("row, how, change, message, code", ROWS, ids=[r[0] for r in ROWS])
def test_data_fault(data, bad, tmp_path, monkeypatch, capsys, row, how, change, message, code):
    change = _resolve(bad, change)
    if callable(how):
        got, out = how(data, tmp_path)
    elif how == "in":
        got, out = _in_process(data, bad, monkeypatch, capsys, **change)
    else:
        got, out = _subprocess(data, bad, nproc=2 if how == "tp2" else 1, **change)
    assert got == code and message in out, out[-3000:]
    if code:
        assert "FLM pre-training:" not in out, out[-3000:]  # refused before any process group or model exists
    if code and how != "tp2":  # torchrun adds its own report of a failed worker
        assert "Traceback" not in out
        assert len([line for line in out.splitlines() if "error" in line.lower()]) == 1, out[-3000:]
