"""The typed `common.pt` record (flm_ext/checkpoint/schema.py): one definition, every older layout read,
bad fields named in one line, and no hand-built common.pt anywhere else.

The grep test is real: on the code before the record (commit 04f8d9e) its patterns find 30 lines in
11 files: the four hand-built writers (training/checkpointing.py's `common_extra`, growth/checkpoint.py's
`grown_common`, export/importer.py, growth/synthetic.py) and the readers that dug into the dict (trainer,
contract, operations, ramp, growth methods, evaluation). `test_the_patterns_catch_the_old_writers` keeps
those four constructions verbatim, so a pattern that stops matching them fails too.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flm_ext.checkpoint import (RECORD_VERSION, CheckpointError, CheckpointRecord, TokenizerRecord, manifest_for_tree,
                                open_checkpoint, read_record)
from flm_ext.checkpoint.run_record import LossLedger, RunContract
from flm_ext.config import FLMConfig

REPO = Path(__file__).resolve().parents[1]
CFG = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=2, seq_length=16, vocab_size=128)
RUN = RunContract(global_batch_size=8, train_samples=64, lr=3e-3, min_lr=3e-4, lr_warmup_init=0.0,
                  lr_warmup_samples=8, lr_decay_samples=64, lr_decay_style="cosine")
TOKENIZER = TokenizerRecord("HuggingFaceTokenizer", "HuggingFaceTokenizer", 1024, "ab" * 32)
GROWTH = {"num_layers": 2, "hidden_size": 32, "old_hidden_size": 16, "num_attention_heads": 2,
          "old_num_attention_heads": 1, "head_dim": 16, "ffn_hidden_size": 128, "old_ffn_hidden_size": 64,
          "new_layers": [1], "ramp_steps": 10, "start_iteration": 4}

# --- no hand-built common.pt outside flm_ext/checkpoint/ -------------------------------------------

PATTERNS = {
    "the flm entry": re.compile(r"""(^\s*|\[|\.get\(|\.pop\(|\.setdefault\(|[{,]\s*)["']flm["']\s*[\]:,)]"""),
    "a top-level common.pt key": re.compile(r"""["'](parallel_layout|opt_param_scheduler)["']"""),
    "a common dict taken apart": re.compile(r"""\bcommon\s*(\[|\.get\(|\.pop\(|\.setdefault\(|\.update\()"""),
    "a raw common.pt load": re.compile(r"""\bload_common\("""),
}

# The four writers as they were before the record (verbatim lines of commit 04f8d9e).
OLD_WRITERS = {
    "training/checkpointing.py": 'return {"consumed_train_samples": consumed_train_samples, '
                                 '"parallel_layout": _layout(), "flm": flm}',
    "growth/checkpoint.py": 'flm = dict(common.get("flm", {}))',
    "export/importer.py": 'common = {"iteration": iteration, "consumed_train_samples": 0, "parallel_layout": None,',
    "growth/synthetic.py": 'finish_iteration_folder(folder, {"iteration": iteration, "consumed_train_samples": 0, '
                           '"parallel_layout": [1, 1],',
    "growth/synthetic.py, its next line": '                                     "flm": {"model_config": asdict(cfg)}})',
}


def hand_built(line: str) -> list[str]:
    return [what for what, pattern in PATTERNS.items() if pattern.search(line)]


def test_the_patterns_catch_the_old_writers():
    for where, line in OLD_WRITERS.items():
        assert hand_built(line), f"the patterns miss {where}'s old common.pt construction: {line}"
    # and stay quiet on look-alikes that are not common.pt: config.json's model_type, the trainer's summary
    for line in ('if config.get("model_type") != "flm":', '@register_model("flm")',
                 'return {"iteration": self.iteration, "consumed_train_samples": self.consumed}'):
        assert not hand_built(line), line


def test_no_hand_built_common_dict_outside_the_checkpoint_package():
    files = sorted(list((REPO / "flm_ext").rglob("*.py")) + list((REPO / "tools").glob("*.py")))
    assert len(files) > 50
    found = []
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("flm_ext/checkpoint/"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for what in hand_built(line):
                found.append(f"{rel}:{n}: {what}: {line.strip()}")
    assert not found, "build or read common.pt through flm_ext.checkpoint.CheckpointRecord:\n" + "\n".join(found)


# --- the record: layout, round trip, older layouts, bad fields -----------------------------------

def full_record() -> CheckpointRecord:
    ledger = LossLedger()
    ledger.saved(4)
    ledger.observe(5, 2.5)
    return CheckpointRecord(iteration=5, model_config=CFG, consumed_train_samples=40, parallel_layout=(2, 1),
                            tokenizer=TOKENIZER, distributed_optimizer=True, run=RUN, health=ledger,
                            growth=GROWTH, grown_from={"path": "/x", "method": "msg", "seed": 0},
                            megatron={"opt_param_scheduler": {"num_steps": 40}})


def test_the_record_writes_the_documented_layout():
    """The on-disk dict, written out by hand from the module docstring's layout (Megatron-LM's
    top-level names, ours under `flm`)."""
    expected = {
        "iteration": 5, "consumed_train_samples": 40, "parallel_layout": [2, 1],
        "opt_param_scheduler": {"num_steps": 40},
        "flm": {"version": RECORD_VERSION, "model_config": dataclasses.asdict(CFG),
                "tokenizer": {"type": "HuggingFaceTokenizer", "name": "HuggingFaceTokenizer", "vocab_size": 1024,
                              "fingerprint": "ab" * 32},
                "optimizer": {"distributed": True},
                "run": {"global_batch_size": 8, "train_samples": 64, "lr": 3e-3, "min_lr": 3e-4, "lr_warmup_init": 0.0,
                        "lr_warmup_samples": 8, "lr_decay_samples": 64, "lr_decay_style": "cosine"},
                "health": {"saves": {4: {"loss": 2.5, "best_before": None}}, "best": 2.5},
                "growth": GROWTH, "grown_from": {"path": "/x", "method": "msg", "seed": 0}},
    }
    assert full_record().to_dict() == expected
    # a tool's record: Megatron-LM's top-level keys are always there, flm entries only when set
    assert CheckpointRecord(iteration=0, model_config=CFG, imported_from="transformers").to_dict() == {
        "iteration": 0, "consumed_train_samples": 0, "parallel_layout": None,
        "flm": {"version": RECORD_VERSION, "model_config": dataclasses.asdict(CFG), "imported_from": "transformers"}}


def test_round_trip_through_common_pt(tmp_path):
    record = full_record()
    torch.save(record.to_dict(), tmp_path / "common.pt")
    back = read_record(str(tmp_path))
    assert back == record
    assert back.health.newest_healthy([4]) == 4 and back.scheduler_state == {"num_steps": 40}


# What earlier versions of this project wrote (read from their git history), oldest first.
OLD_LAYOUTS = {
    # the first trainer: the model config alone
    "trainer, first": {"iteration": 3, "consumed_train_samples": 24, "parallel_layout": [1, 1],
                       "opt_param_scheduler": {"num_steps": 24}, "flm": {"model_config": dataclasses.asdict(CFG)}},
    # + optimizer kind and the tokenizer, a growth ramp carried by the hook
    "trainer, tokenizer": {"iteration": 3, "consumed_train_samples": 24, "parallel_layout": [1, 1],
                           "flm": {"model_config": dataclasses.asdict(CFG), "optimizer": {"distributed": False},
                                   "tokenizer": TOKENIZER.to_dict(), "growth": GROWTH}},
    # + run contract and loss ledger
    "trainer, run contract": {"iteration": 3, "consumed_train_samples": 24, "parallel_layout": [2, 1],
                              "flm": {"model_config": dataclasses.asdict(CFG), "tokenizer": TOKENIZER.to_dict(),
                                      "run": dataclasses.asdict(RUN), "health": {"saves": {}, "best": None}}},
    # growth tool output before the operator registry: no method in grown_from (MSG)
    "grown, before methods": {"iteration": 3, "consumed_train_samples": 24, "parallel_layout": None,
                              "flm": {"model_config": dataclasses.asdict(CFG), "growth": GROWTH,
                                      "grown_from": {"path": "/old", "model_config": dataclasses.asdict(CFG),
                                                     "depth_init": "stack", "depth_placement": "top", "seed": 0}}},
    "imported": {"iteration": 0, "consumed_train_samples": 0, "parallel_layout": None,
                 "flm": {"model_config": dataclasses.asdict(CFG), "imported_from": "transformers"}},
    "synthetic": {"iteration": 100, "consumed_train_samples": 0, "parallel_layout": [1, 1],
                  "flm": {"model_config": dataclasses.asdict(CFG)}},
}


@pytest.mark.parametrize("name", OLD_LAYOUTS)
def test_every_older_layout_reads(name):
    old = OLD_LAYOUTS[name]
    record = CheckpointRecord.from_dict(old, "old/common.pt")
    assert record.version == 0
    assert record.iteration == old["iteration"] and record.model_config == CFG
    assert record.consumed_train_samples == old["consumed_train_samples"]
    assert record.parallel_layout == (tuple(old["parallel_layout"]) if old["parallel_layout"] else None)
    flm = old["flm"]
    assert (record.tokenizer.to_dict() if record.tokenizer else None) == flm.get("tokenizer")
    assert (record.run.to_dict() if record.run else None) == flm.get("run")
    assert record.growth == flm.get("growth") and record.grown_from == flm.get("grown_from")
    assert record.imported_from == flm.get("imported_from")
    assert record.distributed_optimizer == flm.get("optimizer", {}).get("distributed")
    assert record.scheduler_state == old.get("opt_param_scheduler")
    # written again, it is the same record in today's layout
    assert CheckpointRecord.from_dict(record.to_dict(), "new") == dataclasses.replace(record, version=RECORD_VERSION)


def _with(path: str, value, base=None) -> dict:
    """A copy of a valid common.pt dict with one entry changed (value None: removed)."""
    out = full_record().to_dict() if base is None else base
    *parents, leaf = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is None:
        del node[leaf]
    else:
        node[leaf] = value
    return out


@pytest.mark.parametrize("path, value, says", [
    ("iteration", None, "field iteration: missing"),
    ("iteration", "7", "field iteration: expected a non-negative integer, found '7'"),
    ("flm.model_config", None, "field flm.model_config: missing"),
    ("flm.model_config.bogus", 1, "field flm.model_config: fields this version does not know: ['bogus']"),
    ("flm.model_config.hidden_size", 33, "field flm.model_config: unusable model config"),
    ("flm.run.lr", None, "field flm.run: lacks 'lr'"),
    ("flm.run.global_batch_size", 8.5, "field flm.run: global_batch_size 8.5 is not int"),
    ("flm.tokenizer.fingerprint", None, "field flm.tokenizer: lacks 'fingerprint'"),
    ("flm.optimizer", "yes", "field flm.optimizer.distributed: flm.optimizer is not a dict but str"),
    ("parallel_layout", [1], "field parallel_layout: expected [tensor parallel, pipeline parallel]"),
    ("flm.growth", [1, 2], "field flm.growth: expected a dict, found list"),
    ("flm.bogus", 1, "field flm.bogus: not a field of the checkpoint record"),
    ("flm.version", RECORD_VERSION + 1, f"field flm.version: {RECORD_VERSION + 1} is not a layout this version reads"),
])
def test_a_bad_field_is_named_in_one_line(path, value, says):
    with pytest.raises(CheckpointError) as e:
        CheckpointRecord.from_dict(_with(path, value), "CKPT/common.pt")
    message = str(e.value)
    assert message.startswith("CKPT/common.pt: ") and says in message and "\n" not in message, message


def test_a_record_that_could_not_be_read_back_is_never_written():
    with pytest.raises(CheckpointError, match="field flm.imported_from: expected text"):
        full_record().replace(imported_from=3).to_dict()
    with pytest.raises(CheckpointError, match="no field bogus"):
        full_record().replace(bogus=1)


# --- a checkpoint written before the record: loads, resumes, grows, exports -------------------------

def _make_old(folder: str, common: dict) -> None:
    """Replace the iteration folder's common.pt by an older layout (and re-hash the manifest)."""
    torch.save(common, os.path.join(folder, "common.pt"))
    manifest_for_tree(folder)


def _trainer_state():
    """(DDP model, optimizer, LR scheduler) as the trainer builds them, for CFG."""
    from flm_ext.model.flm_model import build_model_chunks
    from flm_ext.training.engine import build_optimizer, wrap_ddp
    from flm_ext.training.optim import OptimConfig
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    model = wrap_ddp(build_model_chunks(CFG))
    optimizer = build_optimizer(model, CFG, OptimConfig())
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-3, min_lr=1e-4, lr_warmup_steps=8,
                                        lr_decay_steps=64, lr_decay_style="cosine", start_wd=0.0, end_wd=0.0,
                                        wd_incr_steps=64, wd_incr_style="constant",
                                        use_checkpoint_opt_param_scheduler=False,
                                        override_opt_param_scheduler=True)
    return model, optimizer, scheduler


def test_an_old_trainer_checkpoint_resumes(tmp_path, megatron_single_process):
    """Saved by the trainer's own save, then given the first trainer layout: the load restores the
    data position and the LR schedule from it, and a save of the resumed run writes today's layout."""
    from flm_ext.checkpoint import training_io

    build = _trainer_state
    model, optimizer, scheduler = build()
    scheduler.step(increment=24)
    root = str(tmp_path / "ckpt")
    folder = training_io.save_checkpoint(root, 3, model, optimizer, scheduler,
                                         record=training_io.trainer_record(3, CFG, 24, optimizer))
    saved = torch.load(os.path.join(folder, "common.pt"), weights_only=True)
    old = {k: v for k, v in saved.items() if k != "flm"}
    old["flm"] = {"model_config": saved["flm"]["model_config"]}  # the first trainer's layout
    _make_old(folder, old)

    model, optimizer, scheduler = build()
    loaded = training_io.load_checkpoint(root, model, optimizer, scheduler)
    assert loaded.record.version == 0 and loaded.record.iteration == 3
    assert loaded.record.consumed_train_samples == 24 and loaded.loaded_scheduler
    assert scheduler.num_steps == 24
    training_io.save_checkpoint(root, 4, model, optimizer, scheduler,
                                record=training_io.trainer_record(4, CFG, 32, optimizer))
    assert read_record(os.path.join(root, "iter_0000004")).version == RECORD_VERSION


def test_a_resume_reads_common_pt_for_the_record_and_hands_it_to_megatron(tmp_path, megatron_single_process,
                                                                         monkeypatch):
    """The load reads common.pt twice: the safety check before anything is unpickled, and once for
    both the record and megatron's common state (megatron no longer reads it again); the weights
    and the LR schedule still come back."""
    from flm_ext.checkpoint import training_io

    model, optimizer, scheduler = _trainer_state()
    scheduler.step(increment=24)
    root = str(tmp_path / "ckpt")
    training_io.save_checkpoint(root, 3, model, optimizer, scheduler,
                                record=training_io.trainer_record(3, CFG, 24, optimizer))
    saved = {k: v.detach().clone() for k, v in model[0].module.state_dict().items() if torch.is_tensor(v)}
    model, optimizer, scheduler = _trainer_state()
    with torch.no_grad():
        for parameter in model[0].module.parameters():
            parameter.zero_()  # the load must bring the weights back
    reads, real_load = [], torch.load

    def counting_load(f, *args, **kwargs):
        if str(f).endswith("common.pt"):
            reads.append(kwargs.get("weights_only"))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    loaded = training_io.load_checkpoint(root, model, optimizer, scheduler)
    assert reads == [True, True]  # verify_for_load's check, then the one read for record and megatron
    assert loaded.record.consumed_train_samples == 24 and loaded.loaded_scheduler and scheduler.num_steps == 24
    for name, tensor in model[0].module.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name


def test_an_old_grown_checkpoint_opens_grows_and_exports(tmp_path):
    """A synthetic checkpoint with the pre-registry growth layout: open_checkpoint reads its ramp,
    the growth tool grows it again (once past the ramp) and the export writes config.json from it."""
    from flm_ext.data.tokenizers import build_tokenizer
    from flm_ext.export.export import export_checkpoint
    from flm_ext.growth.offline import grow_checkpoint
    from flm_ext.growth.state import GrowthState
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    tokenizer = build_tokenizer("GPT2BPETokenizer")
    cfg = dataclasses.replace(CFG, vocab_size=50304)
    root = str(tmp_path / "old")
    write_synthetic_checkpoint(root, cfg, iteration=20, optimizer=True)
    growth = dict(GROWTH, hidden_size=32, old_hidden_size=32, num_attention_heads=2, old_num_attention_heads=2,
                  ffn_hidden_size=128, old_ffn_hidden_size=128, new_layers=[1], ramp_steps=10, start_iteration=4)
    _make_old(os.path.join(root, "iter_0000020"), {
        "iteration": 20, "consumed_train_samples": 160, "parallel_layout": None,
        "flm": {"model_config": dataclasses.asdict(cfg), "growth": growth,
                "grown_from": {"path": "/old", "model_config": dataclasses.asdict(cfg), "depth_init": "stack",
                               "depth_placement": "top", "seed": 0}}})
    ckpt = open_checkpoint(root)
    assert ckpt.record.version == 0 and ckpt.growth_record == growth and ckpt.config == cfg

    grown = grow_checkpoint(root, str(tmp_path / "grown"), {"num_layers": 3}, ramp_steps=5, log=lambda m: None)
    record = read_record(grown)
    assert record.version == RECORD_VERSION and record.model_config.num_layers == 3
    assert record.consumed_train_samples == 160 and record.grown_from["path"] == os.path.abspath(root)
    state = GrowthState.from_dict(record.growth)  # the growth package owns the sub-record's shape
    assert state.start_iteration == 20 and state.change("layers").new == 3

    config = export_checkpoint(ckpt, str(tmp_path / "export"), tokenizer, log=lambda m: None)
    assert config["flm_training"]["iteration"] == 20 and config["num_hidden_layers"] == 2


def test_a_tool_names_the_bad_field_and_writes_nothing(tmp_path):
    from flm_ext.growth.synthetic import write_synthetic_checkpoint

    root = str(tmp_path / "bad")
    write_synthetic_checkpoint(root, CFG, iteration=5, optimizer=False)
    folder = os.path.join(root, "iter_0000005")
    _make_old(folder, _with("flm.run", {"lr": 1.0}, base=read_record(folder).to_dict()))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "grow_checkpoint.py"), "--load", root, "--save",
                           str(tmp_path / "out"), "--num-layers", "3"], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and f"{folder}/common.pt: field flm.run: lacks" in lines[0], lines
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(str(tmp_path / "out") + ".partial")
