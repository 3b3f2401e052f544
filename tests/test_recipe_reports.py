"""The recipe reads what the tools write, never their printed text: its growth and export steps, run
for real on a tiny checkpoint, report the figures of the JSON that grow_checkpoint.py / export_hf.py
(--verify-json) and generate.py (--output) write, checked here against the same figures computed in
this process (the verification on the two checkpoints, greedy decoding of the export). The whole
recipe runs in tests/test_demo.py (slow)."""
from __future__ import annotations

import json

import pytest

from launchers import load_tool as _tool
from test_faults_tools import export  # noqa: F401  (the fixture: a 2-layer checkpoint, its export and BPE)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def recipe_run(tmp_path):
    from flm_ext import recipe

    return recipe, recipe.RecipeConfig(out=str(tmp_path), stages=(), growth_ramp_steps=5), recipe.Runner(str(tmp_path))


def test_growth_step_reports_the_verification_of_the_grown_checkpoint(export, recipe_run, tmp_path):  # noqa: F811
    from export_workers import BASE

    from flm_ext.growth.verify import verify_report

    recipe, cfg, run = recipe_run
    old, new = export.parent / "ckpt", tmp_path / "grown"
    target = BASE.replace(hidden_size=64, num_attention_heads=8, ffn_hidden_size=128)
    step = recipe.grow(cfg, run, str(old), str(new), target, "grow width")
    reference = verify_report(str(old), str(new))  # recomputed here, on the published checkpoint
    assert step["max_abs_logit_diff"] == pytest.approx(reference["max_abs_logit_diff"], rel=1e-6, abs=1e-18)
    assert step["loss_jump"] == pytest.approx(reference["loss_jump"], rel=1e-6, abs=1e-15)
    assert step["max_abs_logit_diff"] < 1e-9 and step["checkpoint"] == str(new)
    report = json.loads((tmp_path / "grown_verify.json").read_text())
    assert report["within_tolerance"] is True and report["tolerance"] == 1e-5 and report["method"] == "msg"


def test_export_step_reports_the_exports_verification_and_greedy_text(export, recipe_run, tmp_path):  # noqa: F811
    from flm_ext.export.generation import Sampling, generate_text, load_hf_model

    recipe, cfg, run = recipe_run
    tok = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(export.parent / "bpe.json")]
    step = recipe.export_final(cfg, run, {"tok": tok}, str(export.parent / "ckpt"))
    assert 0.0 <= step["max_abs_logit_diff"] <= 1e-5
    assert json.loads((tmp_path / "export_verify.json").read_text())["within_tolerance"] is True
    model, codec = load_hf_model(step["folder"], device="cpu")
    for lang, prompt in recipe.EXPORT_PROMPTS.items():  # greedy decoding of the export, in this process
        assert step["greedy"][lang] == prompt + generate_text(model, codec, prompt, 32, Sampling(greedy=True), seed=0)
    generated = json.loads((tmp_path / "greedy.json").read_text())
    assert [g["prompt"] for g in generated["generations"]] == list(recipe.EXPORT_PROMPTS.values())


@pytest.mark.parametrize("tool", ["grow_checkpoint", "export_hf"])
def test_verify_json_needs_verify(export, tmp_path, capsys, tool):  # noqa: F811
    extra = ["--num-layers", "4"] if tool == "grow_checkpoint" else ["--tokenizer-type", "GPT2BPETokenizer"]
    capsys.readouterr()
    code = _tool(tool).main(["--load", str(export.parent / "ckpt"), "--save", str(tmp_path / "out"), *extra,
                             "--verify-json", str(tmp_path / "v.json")])
    err = capsys.readouterr().err
    assert code == 2 and "--verify-json needs --verify" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "v.json").exists()
