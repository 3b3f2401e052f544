"""README.md's walk-through, run as written: its ```bash blocks, in order, in one shell, at a few
steps per stage (its own variables W, S1, S2, S3, RAMP set from the environment), writing under a
temp dir. Each step's output is checked, down to the final evaluation JSON."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import reference_zero_shot
from distributed import lone_process_env
from markdown_blocks import fences, section
from tiny_data import run_tool

REPO = Path(__file__).resolve().parents[1]
HEADING = "Walk-through"
SETUP_LINES = ("make setup", "source .venv/bin/activate")  # done already: the test runs in that venv
STEPS = {"S1": 4, "S2": 4, "S3": 4, "RAMP": 2}


def walkthrough_blocks(readme: str) -> list[str]:
    """The ```bash blocks between the walk-through heading and the next level-2 heading."""
    return [body for info, body in fences(section(readme, HEADING)) if info == "bash"]


def script(blocks: list[str]) -> str:
    """One bash script: the blocks in order, the set-up lines left out, a marker after each block."""
    lines = ["set -euo pipefail"]
    for i, block in enumerate(blocks):
        for line in block.splitlines():
            if not line.strip().startswith(SETUP_LINES):
                lines.append(line)
        lines.append(f"echo \"@@ block {i} done at $SECONDS s\"")
    return "\n".join(lines) + "\n"


def latest(run: Path) -> int:
    return int((run / "latest_checkpointed_iteration.txt").read_text())


def test_readme_blocks_parse_and_start_with_the_setup():
    blocks = walkthrough_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 6
    assert [line.split("#")[0].strip() for line in blocks[0].splitlines()[:2]] == list(SETUP_LINES)
    text = "\n".join(blocks)
    for step in ("build_demo_corpus.py", "train_tokenizer.py", "preprocess_data.py", "tiny-stage1",
                 "--hidden-size 128", "tiny-stage2", "--num-layers 8", "tiny-stage3", "evaluate.py"):
        assert step in text, step
    # every output goes under $W, and both growths take the ramp the stages are sized for
    assert not re.search(r"(--out|--output|--output-prefix|--save) (?!\$W)", text)
    assert text.count("--growth-ramp-steps $RAMP") == 2


@pytest.mark.slow
@pytest.mark.timeout(1200)  # above the script's own 900 s limit
def test_readme_walkthrough_runs_as_written_at_tiny_scale(tmp_path):
    w = tmp_path / "w"
    env = {**lone_process_env(os.environ), "W": str(w), "PYTHONWARNINGS": "ignore",  # a user's shell: no rendezvous
           "OMP_NUM_THREADS": "1", "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           **{k: str(v) for k, v in STEPS.items()}}
    blocks = walkthrough_blocks((REPO / "README.md").read_text())
    proc = subprocess.run(["bash", "-c", script(blocks)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    done = re.findall(r"^@@ block (\d+) done at \d+ s$", proc.stdout, re.M)
    assert proc.returncode == 0, f"block {len(done)} failed:\n{out[-5000:]}"
    assert done == [str(i) for i in range(len(blocks))]

    # corpus, tokenizer, preprocessing
    for name in ("en", "zh", "teacher"):
        for split in ("train", "valid"):
            assert (w / "corpus" / f"{name}_{split}.jsonl").stat().st_size > 0
    assert json.loads((w / "bpe.json").read_text())["model"]["type"] == "BPE"
    for prefix in ("en_text_document", "zh_text_document", "teacher_teacher_document",
                   "teacher_teacher_loss_mask_document"):
        assert (w / f"{prefix}.bin").stat().st_size > 0 and (w / f"{prefix}.idx").stat().st_size > 0
    # three stages, each ending at its step count; two growths that keep the function
    assert (latest(w / "s1"), latest(w / "s2"), latest(w / "s3")) == (STEPS["S1"], STEPS["S2"], STEPS["S3"])
    assert (w / "s2_grown").is_dir() and (w / "s3_grown").is_dir()
    diffs = [float(x) for x in re.findall(r"max abs logit diff: (\S+)", out)]
    assert len(diffs) == 2 and all(0.0 <= d < 1e-5 for d in diffs), diffs
    # stages 2 and 3 ramp the grown masks over RAMP steps, finish the ramp, and do not warn
    ramps = re.findall(r"growth: masks ramp from 0 to 1 over (\d+) steps", out)
    assert ramps == [str(STEPS["RAMP"])] * 2, ramps
    assert len(re.findall(r"growth masks ramped to 1 and dropped", out)) == 2
    assert "warning: the growth ramp" not in out
    assert all(any((w / "tensorboard" / s).iterdir()) for s in ("s1", "s2", "s3"))
    # the final evaluation
    result = json.loads((w / "eval.json").read_text())
    for lang in ("en", "zh"):
        assert math.isfinite(result["languages"][lang]["perplexity"]) and result["languages"][lang]["perplexity"] > 1
    reviews = result["zero_shot"]["reviews"]
    held_out = len((w / "corpus" / "teacher_valid.jsonl").read_text().splitlines())
    assert reviews["samples"] == held_out
    # the reported accuracy against answers recomputed apart from flm_ext.evaluation: s3 exported,
    # then scored under transformers
    export = run_tool("export_hf.py", "--load", str(w / "s3"), "--save", str(tmp_path / "export"),
                      "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(w / "bpe.json"), env=env)
    assert export.returncode == 0, (export.stdout + export.stderr)[-3000:]
    answers = reference_zero_shot.margins(str(tmp_path / "export"), str(w / "corpus" / "teacher_valid.jsonl"), held_out)
    reference_zero_shot.check_accuracy(reviews, answers)
