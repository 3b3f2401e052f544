"""Checkpoint faults, one row each: what is done to a run's checkpoints, what `pretrain_flm.py
--load` then says (a fragment of its one-line message), its exit code, and which checkpoint is the
latest afterwards. Nothing is ever silently restarted, loaded damaged, or run from a crafted file.

The base run saves iterations 1, 2 and 3 (latest 3); each row works on a copy of it. (It trains a 4th
step, whose LR is the uninterrupted schedule's, then its 4th save is taken away: a run stopped after 3.)
"""
from __future__ import annotations

import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_data

REPO = Path(__file__).resolve().parents[1]
MARKER = "latest_checkpointed_iteration.txt"


class _RunsCode:
    """Unpickling this runs a command: what a crafted checkpoint file would do."""

    def __init__(self, witness: Path):
        self.witness = str(witness)

    def __reduce__(self):
        return (os.system, (f"touch {self.witness}",))


def _shard(ckpt: Path) -> Path:
    return sorted((ckpt / "iter_0000003").glob("*.distcp"))[0]


def flip_bytes(ckpt, witness):
    with open(_shard(ckpt), "r+b") as f:
        f.seek(os.path.getsize(_shard(ckpt)) // 2)
        f.write(os.urandom(64 * 1024))


def truncate(ckpt, witness):
    path = _shard(ckpt)
    os.truncate(path, os.path.getsize(path) // 2)


def delete(ckpt, witness):
    _shard(ckpt).unlink()


def garbage_marker(ckpt, witness):
    (ckpt / MARKER).write_text("latest!\n")


def marker_to_missing(ckpt, witness):
    (ckpt / MARKER).write_text("9")


def marker_deleted(ckpt, witness):
    (ckpt / MARKER).unlink()


def _consistent_manifest(folder: Path) -> None:
    """A crafted checkpoint comes with a manifest that matches it: the checksums cannot be the defence."""
    from flm_ext.checkpoint import manifest_for_tree

    manifest_for_tree(str(folder))


def crafted_metadata(ckpt, witness):
    with open(ckpt / "iter_0000003" / ".metadata", "wb") as f:
        pickle.dump(_RunsCode(witness), f)
    _consistent_manifest(ckpt / "iter_0000003")


def crafted_common(ckpt, witness):
    import torch

    torch.save({"iteration": 3, "payload": _RunsCode(witness)}, ckpt / "iter_0000003" / "common.pt")
    _consistent_manifest(ckpt / "iter_0000003")


ROWS = [  # (fault, flags, message fragment, exit code, latest afterwards)
    (flip_bytes, [], "iter_0000003/__0_", 1, 3),
    (flip_bytes, [], "checksum mismatch (checkpoint damaged)", 1, 3),
    (truncate, [], "the manifest says", 1, 3),
    (delete, [], ".distcp: missing (checkpoint damaged)", 1, 3),
    (garbage_marker, [], "expected an iteration number, found 'latest!'; complete iterations in", 1, None),
    (marker_to_missing, [], "names iteration 9 but", 1, 9),
    (marker_deleted, [], "is missing but", 1, None),
    (crafted_metadata, [], ".metadata: refused to load: posix.system is not a checkpoint-metadata type", 1, 3),
    (crafted_common, [], "common.pt: refused to load", 1, 3),
    (None, ["--use-distributed-optimizer"], "saved without --use-distributed-optimizer", 1, 3),
]


@pytest.fixture(scope="module")
def base(data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "ckpt"
    # The LR decays over 32 samples whatever --train-iters says; the resumes below train the 4th step.
    tiny_data.train(1, data, root.parent / "base", train_iters=4, save=str(root), save_interval=1, keep_last=0,
                    lr_decay_samples=32)
    assert (root / MARKER).read_text().strip() == "4"
    shutil.rmtree(root / "iter_0000004")
    (root / MARKER).write_text("3")
    return root


def _latest(ckpt: Path):
    text = (ckpt / MARKER).read_text().strip() if (ckpt / MARKER).exists() else None
    return int(text) if text and text.isdigit() else None


def _resume(data, ckpt: Path, *flags, preexec=None) -> subprocess.CompletedProcess:
    args = tiny_data.train_args(data, train_iters=4, save=str(ckpt), load=str(ckpt), save_interval=1, keep_last=0,
                                lr_decay_samples=32)
    return subprocess.run(tiny_data.command(1, args + list(flags)), capture_output=True, text=True,
                          env=tiny_data.ENV, timeout=300, preexec_fn=preexec)


@pytest.mark.parametrize("fault,flags,fragment,code,latest", ROWS,
                         ids=[f"{(r[0] or (lambda: 0)).__name__}-{i}" for i, r in enumerate(ROWS)])
def test_checkpoint_fault(base, data, tmp_path, fault, flags, fragment, code, latest):
    ckpt, witness = tmp_path / "ckpt", tmp_path / "code_ran"
    shutil.copytree(base, ckpt)
    if fault is not None:
        fault(ckpt, witness)
    before = sorted(p.name for p in ckpt.iterdir())
    proc = _resume(data, ckpt, *flags)
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out[-3000:]
    assert fragment in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not witness.exists(), "the crafted file ran code"
    assert _latest(ckpt) == latest
    assert sorted(p.name for p in ckpt.iterdir()) == before, "a refused load must not train or save"


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(base, data, tmp_path):
    """A file-size limit (EFBIG) makes the save of iteration 4 fail: named, non-zero, previous latest kept."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(base, ckpt)
    shard = max(os.path.getsize(p) for p in (ckpt / "iter_0000003").glob("*.distcp"))

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (shard // 2, shard // 2))

    proc = _resume(data, ckpt, preexec=limit_file_size)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"saving {ckpt}/iter_0000004 failed: file too large" in out, out[-3000:]
    assert "iteration 3 stays the latest checkpoint" in out
    assert _latest(ckpt) == 3
    assert not (ckpt / "iter_0000004").exists() and not (ckpt / "iter_0000004.partial").exists()


def test_no_load_optim_keeps_the_lr_schedule(base, data, tmp_path):
    """The LR of the first resumed step without the optimizer state is the uninterrupted run's (the
    base run's own 4th step), not the warm-up LR a fresh schedule would give."""
    ckpt, metrics = tmp_path / "no_optim", tmp_path / "no_optim.jsonl"
    shutil.copytree(base, ckpt)
    proc = _resume(data, ckpt, "--metrics-jsonl", str(metrics), "--no-load-optim")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Adam's moments start from zero; the LR schedule continues" in proc.stdout
    resumed = tiny_data.losses(metrics, "train/lr")
    uninterrupted = tiny_data.losses(base.parent / "base" / "metrics.jsonl", "train/lr")
    assert sorted(resumed) == [4] and resumed[4] == uninterrupted[4]
    assert resumed[4] != uninterrupted[1]


@pytest.mark.parametrize("tool", ["evaluate", "grow_checkpoint", "export_hf"])
def test_every_tool_refuses_a_crafted_checkpoint(base, data, tmp_path, tool):
    ckpt, witness = tmp_path / "ckpt", tmp_path / "code_ran"
    shutil.copytree(base, ckpt)
    crafted_metadata(ckpt, witness)
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", data["tokenizer"]]
    held_out = Path(data["en"]).parent / "en.jsonl"
    args = {"evaluate": ["--load", str(ckpt), *tok, "--valid-data", f"en={held_out}"],
            "grow_checkpoint": ["--load", str(ckpt), "--save", str(tmp_path / "grown"), "--num-layers", "4"],
            "export_hf": ["--load", str(ckpt), "--save", str(tmp_path / "hf"), *tok]}[tool]
    proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *args], capture_output=True,
                          text=True, env=tiny_data.ENV, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "refused to load" in out and "Traceback" not in out, out[-3000:]
    assert not witness.exists()
    assert not (tmp_path / "grown").exists() and not (tmp_path / "hf").exists()


def test_non_finite_weights_are_never_saved(base, data, tmp_path, megatron_single_process):
    """The trainer's save refuses weights that are not finite; the latest checkpoint is unchanged."""
    import torch

    from flm_ext.training.arguments import build_parser, config_from_args
    from flm_ext.training.trainer import Trainer, TrainingError

    ckpt = tmp_path / "ckpt"
    shutil.copytree(base, ckpt)
    args = tiny_data.train_args(data, train_iters=4, save=str(ckpt), load=str(ckpt), lr_decay_samples=32)
    trainer = Trainer(config_from_args(build_parser().parse_args(args), 1))
    trainer.resume()
    with torch.no_grad():
        next(trainer.model[0].parameters()).view(-1)[0] = float("nan")
    with pytest.raises(TrainingError, match="weights are not finite at iteration 3: not saving them"):
        trainer.save("test")
    assert _latest(ckpt) == 3 and not (ckpt / "iter_0000003.partial").exists()


def test_another_tokenizer_of_the_same_size_is_refused(base, data, tmp_path):
    """Same vocabulary size, different vocabulary: evaluation and export would otherwise run and report
    plausible but meaningless numbers. The trainer records its tokenizer's fingerprint in every save."""
    held_out = Path(data["en"]).parent / "zh.jsonl"
    other = tmp_path / "other_bpe.json"
    made = subprocess.run([sys.executable, str(REPO / "tools" / "train_tokenizer.py"), "--input", str(held_out),
                           "--vocab-size", "1024", "--output", str(other)], capture_output=True, text=True,
                          env=tiny_data.ENV, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(other)]
    for tool, args in (("evaluate", ["--load", str(base), *tok, "--valid-data", f"zh={held_out}"]),
                       ("export_hf", ["--load", str(base), "--save", str(tmp_path / "hf"), *tok])):
        proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *args], capture_output=True,
                              text=True, env=tiny_data.ENV, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out[-3000:]
        assert "was trained with another tokenizer (HuggingFaceTokenizer, 1024 tokens" in out, out[-3000:]
        assert "Traceback" not in out
    assert not (tmp_path / "hf").exists()
