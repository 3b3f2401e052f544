"""Tool faults, one row each: what is done to the input or asked of the tool, what it then says (a
fragment of its one-line message), its exit code, and that nothing was written or run.

- import_hf / generate on a real export (of a TP=1 checkpoint saved by the trainer's own save): an
  import writes no checkpoint (nor its .partial); generation runs no code from the folder that this
  package does not ship.
- grow_checkpoint on that checkpoint: a failed --verify leaves nothing at --save.
- preprocess_data: output it cannot write (read-only folder, the file-size limit, with 1 and 2
  partitions) and a JSON string holding a lone surrogate.
- evaluate: --limit 0 / -1, and an unknown task reported before the checkpoint is loaded."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_testutils import write_jsonl
from launchers import load_tool as _tool

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def export(tmp_path_factory, megatron_single_process) -> Path:
    """A 2-layer FLM (hidden 32, FFN 64, context 64) saved at TP=1 and exported with a 300-token BPE."""
    import export_workers
    from flm_ext.config import ParallelConfig
    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.data.train_bpe import train_bpe
    from flm_ext.export import open_for_export
    from flm_ext.export.export import export_checkpoint
    from flm_ext.checkpoint.training_io import save_checkpoint, trainer_record

    d = tmp_path_factory.mktemp("faults_export")
    with open(d / "text.jsonl", "w", encoding="utf-8") as f:
        for i in range(50):
            f.write(json.dumps({"text": f"In the beginning God created the heaven and the earth {i}. 起初，神创造天地。"})
                    + "\n")
    bpe = train_bpe([str(d / "text.jsonl")], str(d / "bpe.json"), vocab_size=300, min_frequency=1)
    chunks = export_workers.perturbed_chunks(export_workers.BASE, ParallelConfig(), seed=5)
    save_checkpoint(str(d / "ckpt"), 2, chunks, None, None, record=trainer_record(2, export_workers.BASE, 0))
    export_checkpoint(open_for_export(str(d / "ckpt")), str(d / "hf"),
                      build_tokenizer("HuggingFaceTokenizer", tokenizer_model=bpe), tokenizer_model=bpe,
                      log=lambda m: None)
    return d / "hf"


# --- what a row does to its copy of the export ------------------------------------------------------
def _edit_config(**changes):
    def edit(folder: Path, witness: Path):
        config = json.loads((folder / "config.json").read_text())
        record = config["flm_training"]["model_config"]
        for key, value in changes.items():
            target, key = (record, key[len("record_"):]) if key.startswith("record_") else (config, key)
            if value is None:
                target.pop(key)
            else:
                target[key] = value
        (folder / "config.json").write_text(json.dumps(config))
    return edit


def _edit_tensor(name, change):
    def edit(folder: Path, witness: Path):
        from safetensors.torch import load_file, save_file

        tensors = load_file(folder / "model-00001-of-00001.safetensors")
        tensors[name] = change(tensors[name])
        if tensors[name] is None:
            del tensors[name]
        save_file(tensors, folder / "model-00001-of-00001.safetensors", metadata={"format": "pt"})
    return edit


def _one_layer_config(folder, witness):
    """config.json says 1 layer (transformers fields and the training record), the tensors hold 2."""
    _edit_config(num_hidden_layers=1, record_num_layers=1)(folder, witness)


def _not_json(folder, witness):
    (folder / "config.json").write_text('{"model_type": "flm", "hidden_size": 32,')


def _garbage_safetensors(folder, witness):
    (folder / "model-00001-of-00001.safetensors").write_bytes(os.urandom(4096))


def _edited_code(folder, witness):
    """The export's modeling_flm.py edited to create a witness file when imported."""
    with open(folder / "modeling_flm.py", "a", encoding="utf-8") as f:
        f.write(f"\nopen({str(witness)!r}, 'w').write('ran')\n")


IMPORT_ROWS = [  # (row id, change, expected message fragment)
    ("unused_layer_tensors", _one_layer_config,
     "tensors that config.json (1 layers, hidden 32, FFN 64, vocabulary 300) has no place for: model.layers.1."),
    ("ffn_128_for_a_64_config", _edit_config(intermediate_size=128, record_ffn_hidden_size=128),
     "tensor model.layers.0.mlp.fc1.bias has shape (64,), config.json (2 layers, hidden 32, FFN 128"),
    ("final_norm_of_31", _edit_tensor("model.norm.weight", lambda t: t[:31].clone()),
     "tensor model.norm.weight has shape (31,), config.json (2 layers, hidden 32, FFN 64, vocabulary 300) implies "
     "(32,)"),
    ("wrong_embedding_width", _edit_tensor("model.embed_tokens.weight", lambda t: t[:, :30].clone()),
     "tensor model.embed_tokens.weight has shape (300, 30)"),
    ("layer_bias_with_an_extra_dim", _edit_tensor("model.layers.1.mlp.fc2.bias", lambda t: t.unsqueeze(0)),
     "model.layers.1.mlp.fc2.bias has shape (1, 32)"),
    ("missing_layer_tensor", _edit_tensor("model.layers.1.mlp.fc2.bias", lambda t: None),
     "needs tensors the folder lacks: model.layers.1.mlp.fc2.bias"),
    ("no_vocab_size", _edit_config(vocab_size=None), "config.json lacks vocab_size"),
    ("no_vocab_size_in_record", _edit_config(record_vocab_size=None), "flm_training.model_config lacks vocab_size"),
    ("config_contradicts_record", _edit_config(num_hidden_layers=1), "num_hidden_layers 1 vs flm_training"),
    ("config_not_json", _not_json, "config.json is not readable JSON"),
    ("garbage_safetensors", _garbage_safetensors, "model-00001-of-00001.safetensors is not a safetensors file"),
]


@pytest.mark.parametrize("row, change, message", IMPORT_ROWS, ids=[r[0] for r in IMPORT_ROWS])
def test_import_fault(export, tmp_path, capsys, row, change, message):
    folder, save = tmp_path / "hf", tmp_path / "ckpt"
    shutil.copytree(export, folder)
    change(folder, tmp_path / "witness")
    capsys.readouterr()
    code = _tool("import_hf").main(["--load", str(folder), "--save", str(save)])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not save.exists() and not Path(str(save) + ".partial").exists()


def test_import_of_the_untouched_export_works(export, tmp_path, capsys):
    """The reference for the rows above: the same folder, unchanged, imports (exit 0)."""
    assert _tool("import_hf").main(["--load", str(export), "--save", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def _generate(folder, *args, timeout=240):
    return subprocess.run([sys.executable, str(REPO / "tools" / "generate.py"), "--load", str(folder), *args],
                          capture_output=True, text=True, env=ENV, stdin=subprocess.DEVNULL, timeout=timeout)


def test_edited_export_code_is_not_run(export, tmp_path):
    """An export whose modeling_flm.py was edited: refused without --trust-remote-code (the witness
    is not created); with the flag the folder's code runs (the witness is created)."""
    folder, witness = tmp_path / "hf", tmp_path / "witness"
    shutil.copytree(export, folder)
    _edited_code(folder, witness)
    proc = _generate(folder, "--prompt", "In the beginning", "--max-new-tokens", "2")
    assert proc.returncode == 2 and "not the code this flm_ext ships" in proc.stderr, proc.stderr[-2000:]
    assert "--trust-remote-code" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not witness.exists()
    proc = _generate(folder, "--prompt", "In the beginning", "--max-new-tokens", "2", "--trust-remote-code")
    assert proc.returncode == 0 and witness.read_text() == "ran", proc.stderr[-2000:]


def test_own_export_loads_with_this_packages_classes(export, tmp_path):
    """A folder this package wrote runs flm_ext's FLMForCausalLM, not a module imported from the
    folder; another config.json code reference (another repository) is refused."""
    from flm_ext.export import ExportError
    from flm_ext.export.loading import foreign_code, load_export_model
    from flm_ext.export.modeling_flm import FLMForCausalLM

    model = load_export_model(str(export))
    assert type(model) is FLMForCausalLM and foreign_code(str(export)) == []
    folder = tmp_path / "hf"
    shutil.copytree(export, folder)
    _edit_config(auto_map={"AutoModelForCausalLM": "someone/repo--modeling_x.X"})(folder, None)
    assert foreign_code(str(folder)) == ["someone/repo"]
    with pytest.raises(ExportError, match="--trust-remote-code"):
        load_export_model(str(folder))


GENERATE_ROWS = [  # (row id, flags, expected message fragment)
    ("prompt_longer_than_context", ["--prompt", "In the beginning God created " * 20],
     "longer than the model's context of 64 (max_position_embeddings)"),
    ("empty_prompt", ["--prompt", ""], "--prompt is empty"),
]


@pytest.mark.parametrize("row, flags, message", GENERATE_ROWS, ids=[r[0] for r in GENERATE_ROWS])
def test_generate_fault(export, capsys, row, flags, message):
    capsys.readouterr()
    code = _tool("generate").main(["--load", str(export), "--max-new-tokens", "2", *flags])
    out = capsys.readouterr()
    assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, out.err
    assert out.out == "" and "indexing errors" not in out.err


# --- grow_checkpoint ------------------------------------------------------------------------------
def test_grow_refuses_a_negative_tolerance(export, tmp_path, capsys):
    ckpt = export.parent / "ckpt"
    capsys.readouterr()
    code = _tool("grow_checkpoint").main(["--load", str(ckpt), "--save", str(tmp_path / "grown"), "--num-layers", "4",
                                          "--verify", "--tolerance", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and "--tolerance -1 must be >= 0" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "grown").exists() and not (tmp_path / "grown.partial").exists()


def test_a_failed_grow_verify_leaves_no_grown_checkpoint(export, tmp_path):
    """Width growth is exact only up to float64 rounding (~1e-15): --tolerance 0 fails its verify. The
    grown files are removed, not published (before, --save held a complete-looking checkpoint)."""
    ckpt, save = export.parent / "ckpt", tmp_path / "grown"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "grow_checkpoint.py"), "--load", str(ckpt), "--save",
                           str(save), "--hidden-size", "64", "--num-attention-heads", "8", "--ffn-hidden-size", "128",
                           "--verify", "--tolerance", "0"], capture_output=True, text=True, env=ENV, timeout=240)
    diff = float(proc.stdout.split("max abs logit diff: ")[1].split()[0])
    assert diff > 0 and proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert "> --tolerance 0; the grown checkpoint was removed" in proc.stderr and "Traceback" not in proc.stderr
    assert not save.exists() and not Path(str(save) + ".partial").exists()


# --- preprocess_data --------------------------------------------------------------------------------
def _preprocess(inp, out_prefix, *flags, preexec_fn=None):
    return subprocess.run([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(inp),
                           "--output-prefix", str(out_prefix), "--tokenizer-type", "GPT2BPETokenizer", *flags],
                          capture_output=True, text=True, env=ENV, timeout=240, preexec_fn=preexec_fn)


def _file_size_limit(limit=4096):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.parametrize("row, partitions, limit, read_only, message", [
    ("read_only_folder", 1, None, True, "writing"),
    ("file_size_limit", 1, 4096, False, "the file-size limit was reached (ulimit -f)"),
    ("file_size_limit_partitions_2", 2, 4096, False, "the file-size limit was reached (ulimit -f)"),
], ids=lambda v: v if isinstance(v, str) and "_" in v else None)
def test_preprocess_output_fault(tmp_path, row, partitions, limit, read_only, message):
    inp = write_jsonl(str(tmp_path / "in.jsonl"), [{"text": f"In the beginning {i} " * 40} for i in range(200)])
    out = tmp_path / "out"
    out.mkdir()
    if read_only:  # root ignores permission bits: an immutable folder (chattr +i) refuses it too
        out.chmod(0o555)
        if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode:
            pytest.skip("running as root without chattr: cannot make a folder it cannot write")
    try:
        proc = _preprocess(inp, out / "ds", "--partitions", str(partitions),
                           preexec_fn=_file_size_limit(limit) if limit else None)
    finally:
        if read_only and os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(out)], capture_output=True)
        out.chmod(0o755)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert f"--output-prefix {out / 'ds'}: writing" in proc.stderr and "nothing was written" in proc.stderr
    assert "--skip-bad-lines" not in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert os.listdir(out) == []


def test_preprocess_lone_surrogate(tmp_path):
    """json.loads accepts "\\ud800" but no tokenizer takes it (a TypeError before, even with
    --skip-bad-lines): without the flag, one line naming file and line; with it, skipped and counted."""
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "good one"}\n{"text": "bad \\ud800 here"}\n{"text": "good two"}\n')
    proc = _preprocess(inp, tmp_path / "a" / "ds")
    assert proc.returncode == 2 and f"{inp}:2: lone_surrogate" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    proc = _preprocess(inp, tmp_path / "b" / "ds", "--skip-bad-lines")
    assert proc.returncode == 0 and "skipped bad lines: 1 (lone_surrogate=1)" in proc.stdout, proc.stderr[-2000:]
    from data_testutils import read_indexed
    from flm_ext.data.tokenizers import build_tokenizer

    tok = build_tokenizer("GPT2BPETokenizer")
    docs, _ = read_indexed(str(tmp_path / "b" / "ds_text_document"))
    assert docs == [tok.tokenize("good one"), tok.tokenize("good two")]


# --- evaluate -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", ["0", "-1"])
def test_evaluate_refuses_a_limit_below_one(tmp_path, capsys, limit):
    with pytest.raises(SystemExit) as stop:
        _tool("evaluate").main(["--load", str(tmp_path), "--tokenizer-type", "GPT2BPETokenizer", "--tasks", "iq",
                                "--limit", limit])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"--limit {limit} must be >= 1" in err, err
    assert len([line for line in err.splitlines() if "error" in line]) == 1 and "Traceback" not in err


def test_evaluate_reports_an_unknown_task_before_loading(tmp_path):
    """--load is a folder with no checkpoint: had the checkpoint been loaded first, that would be the error."""
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "evaluate.py"), "--load", str(tmp_path),
                           "--tokenizer-type", "GPT2BPETokenizer", "--tasks", "iq,no_such_task_xyz"],
                          capture_output=True, text=True, env=ENV, timeout=240)
    assert proc.returncode == 2 and "--tasks no_such_task_xyz: no such task" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "checkpoint" not in proc.stderr.lower()
