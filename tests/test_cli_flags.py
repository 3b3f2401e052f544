"""Every CLI keeps its interface: the option strings of each parser (and sub-command) equal the
snapshot taken before flags were generated from config dataclasses (tests/data/cli_flags, written by
tests/cli_snapshot.py at commit 04f8d9e), plus the new names listed here, and nothing else; and each
option keeps its default (and the attribute it sets, but for the renames listed here)."""
from __future__ import annotations

import os
import re

import pytest

from cli_snapshot import CLIS, REPO, read, snapshot, snapshot_defaults, snapshot_help

SNAPSHOTS = os.path.join(REPO, "tests", "data", "cli_flags")

# Names added since the snapshot, per CLI and sub-command ('' = top level). Nothing was removed.
ADDED: dict[str, dict[str, set[str]]] = {
    "pretrain_flm": {"": {"--iteration"}},  # the checkpoint step's old name, kept as an alias everywhere
    "export_hf": {"": {"--ckpt-step", "--verify-json"}},  # Megatron's name for the checkpoint step (--iteration
    # still works); --verify-json: the --verify figures as JSON (what the demo reads instead of printed text)
    "grow_checkpoint": {"": {"--verify-json"}},
    "generate": {"": {"--ckpt-step", "--output"}},  # --output: prompts and continuations as JSON
    "serve": {"": {"--ckpt-step"}},
}
# Options whose parsed attribute changed on purpose: the checkpoint step is `ckpt_step` everywhere; plan_schedule's
# failure flags set FailureModel's fields.
RENAMED_DEST = {"iteration": "ckpt_step", "save_seconds": "save_s", "restart_seconds": "restart_s",
                "step_seconds": "step_s"}


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_help_lists_the_snapshot_flags(cli):
    before = read(os.path.join(SNAPSHOTS, f"{cli}.txt"))
    now = snapshot(cli)
    assert set(now) == set(before), f"{cli}: sub-commands changed"
    for label, flags in before.items():
        expected = set(flags) | ADDED.get(cli, {}).get(label, set())
        assert set(now[label]) == expected, (f"{cli} [{label}]: missing {sorted(expected - set(now[label]))}, "
                                             f"unexpected {sorted(set(now[label]) - expected)}")
    helps = snapshot_help(cli)
    for label, flags in now.items():  # and --help prints each of them
        assert all(re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", helps[label]) for f in flags), (cli, label)


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_every_flag_keeps_its_default(cli):
    before = read(os.path.join(SNAPSHOTS, f"{cli}.defaults.txt"))
    now = snapshot_defaults(cli)
    for label, lines in before.items():
        for line in lines:
            option, described = line.split(" ", 1)
            for old, new in RENAMED_DEST.items():
                described = described.replace(f"dest={old} ", f"dest={new} ")
            assert now[label][option] == described, f"{cli} [{label}] {option}"


# Adding a field to a config dataclass: a copy of the repository with one new field in each shared config,
# then every CLI's parser is built there. The CLIs that use each config (by design) get its flag, and the
# parsed value reaches the config object, with no edit anywhere but the field.
NEW_FIELDS = [  # (file, line after which the field goes, field line, flag, CLIs that use the config)
    ("flm_ext/data/tokenizers.py", "    merge_file: Optional[str] = flag(",
     '    tokenizer_extra_knob: Optional[int] = flag(None, help="a new tokenizer setting")\n',
     "--tokenizer-extra-knob",
     {"pretrain_flm", "evaluate", "export_hf", "generate", "preprocess_data", "serve"}),
    ("flm_ext/config.py", "    scale_attn_by_inverse_layer_idx: bool = flag(",
     '    toy_model_knob: int = flag(7, help="a new model setting")\n', "--toy-model-knob", {"pretrain_flm"}),
    ("flm_ext/flags.py", "    tolerance: float = flag(",
     '    probe_batches: int = flag(1, help="a new verify setting")\n', "--probe-batches",
     {"export_hf", "grow_checkpoint"}),
    ("flm_ext/flags.py", "    ckpt_step: int | None = flag(",
     '    ckpt_extra_knob: int | None = flag(None, help="a new checkpoint-choice setting")\n', "--ckpt-extra-knob",
     {"pretrain_flm", "export_hf", "generate", "serve"}),
    ("flm_ext/data/preprocess.py", "    log_interval: float = flag(",
     '    preprocess_knob: int = flag(1, help="a new preprocessing setting")\n', "--preprocess-knob",
     {"preprocess_data"}),
    ("flm_ext/failures.py", "    global_batch_size: int = flag(",
     '    failure_knob: float = flag(1.0, help="a new failure-model setting")\n', "--failure-knob", {"plan_schedule"}),
    ("flm_ext/growth/options.py", "    progress_interval: float = flag(",
     '    growth_knob: int = flag(1, help="a new growth setting")\n', "--growth-knob", {"grow_checkpoint"}),
]

_PROBE = r'''
import argparse, json, sys
sys.path.insert(0, "tests")
from cli_snapshot import CLIS, capture_parser
flags = json.loads(sys.argv[1])
found = {}
for cli in CLIS:
    parser = capture_parser(cli)
    for action in parser._actions:
        action.required = False
    for flag in flags:
        if any(flag in a.option_strings for a in parser._actions):
            ns, _ = parser.parse_known_args([flag, "5"])
            found.setdefault(flag, {})[cli] = getattr(ns, flag[2:].replace("-", "_"))
from flm_ext.training.arguments import build_parser, config_from_args
args = build_parser().parse_args(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
                                  "--train-iters", "1", "--dry-run", "--toy-model-knob", "9",
                                  "--tokenizer-extra-knob", "3", "--ckpt-extra-knob", "4"])
config = config_from_args(args, 1)
found["config"] = [config.model.toy_model_knob, config.data.tokenizer_extra_knob, config.checkpoint.ckpt_extra_knob]
print(json.dumps(found))
'''


def _copy_with_new_fields(tmp_path):
    import shutil

    for part in ("flm_ext", "tools", "tests/cli_snapshot.py", "pretrain_flm.py"):
        source, target = os.path.join(REPO, part), tmp_path / part
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    for path, after, line, _, _ in NEW_FIELDS:
        text = (tmp_path / path).read_text()
        start = text.index(after)
        end = start
        while True:  # the end of the (maybe multi-line) field the new one follows
            end = text.index("\n", end) + 1
            if text[start:end].count("(") == text[start:end].count(")"):
                break
        (tmp_path / path).write_text(text[:end] + line + text[end:])


def test_a_new_config_field_is_a_flag_of_every_cli_that_uses_the_config(tmp_path):
    import json
    import subprocess
    import sys

    _copy_with_new_fields(tmp_path)
    flags = [flag for _, _, _, flag, _ in NEW_FIELDS]
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(flags)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for _, _, _, flag, clis in NEW_FIELDS:
        assert found.get(flag) == {cli: 5 for cli in clis}, flag
    assert found["config"] == [9, 3, 4]  # the parsed values reach the configs built from the flags


@pytest.mark.parametrize("cli", ["export_hf", "generate", "serve", "pretrain_flm"])
def test_the_checkpoint_step_has_one_name_and_the_old_one_still_works(cli):
    from cli_snapshot import capture_parser

    parser = capture_parser(cli)
    for action in parser._actions:
        action.required = False
    for typed in (["--ckpt-step", "7"], ["--iteration", "7"], ["--iteration=7"]):
        assert parser.parse_known_args(typed)[0].ckpt_step == 7, typed
    assert parser.parse_known_args([])[0].ckpt_step is None


def test_negations_and_aliases_of_the_training_flags():
    from flm_ext.training.arguments import build_parser, config_from_args

    base = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--train-iters", "1", "--dry-run"]
    config = config_from_args(build_parser().parse_args(base), 1)
    assert config.checkpoint.verify_checkpoint and not config.model.use_mup and config.checkpoint.keep_last == 3
    config = config_from_args(build_parser().parse_args(
        base + ["--no-verify-checkpoint", "--use-mup", "--override-opt-param-scheduler", "--keep-last", "0"]), 1)
    assert not config.checkpoint.verify_checkpoint and config.model.use_mup
    assert config.checkpoint.override_opt_param_scheduler and config.checkpoint.keep_last is None  # 0: keep all
    preset = config_from_args(build_parser().parse_args(
        ["--model-preset", "flm-16b", "--no-use-mup", "--train-iters", "1", "--dry-run", "--world-size", "1"]), 1)
    assert not preset.model.use_mup and preset.model.hidden_size == 5632  # the preset's µP turned off, the rest kept


@pytest.mark.parametrize("samples, iters", [("train_samples", "train_iters"), ("lr_warmup_samples", "lr_warmup_iters")])
def test_a_count_in_iterations_is_stored_in_samples_and_named_as_typed(samples, iters):
    """Each samples/iterations pair: N iterations are N x the global batch in samples, and messages name
    the flag that was typed (with iterations, rounded up, where they give a count to pass)."""
    from flm_ext.training.arguments import ITERATION_FLAGS, build_parser, config_from_args

    assert ITERATION_FLAGS[samples] == iters
    base = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--global-batch-size", "8",
            "--micro-batch-size", "2", "--dry-run"] + ([] if samples == "train_samples" else ["--train-samples", "400"])

    def schedule(*flags):
        return config_from_args(build_parser().parse_args(base + list(flags)), 4).schedule

    s = schedule(f"--{iters.replace('_', '-')}", "5")
    assert getattr(s, samples) == 40 and s.typed == (iters,)
    assert s.flag(samples) == f"--{iters.replace('_', '-')}=5 (40 samples)"
    assert s.as_typed(samples, 41) == f"--{iters.replace('_', '-')} 6"
    s = schedule(f"--{samples.replace('_', '-')}", "40")
    assert getattr(s, samples) == 40 and s.typed == ()
    assert s.flag(samples) == f"--{samples.replace('_', '-')}=40"
    assert s.as_typed(samples, 41) == f"--{samples.replace('_', '-')} 41"
