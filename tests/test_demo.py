"""A small version of `make demo`: the whole recipe in miniature, with few steps per stage."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_recipe_in_miniature_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "tiny_recipe.py"), "--out", str(out),
                           "--scale", "0.02"], capture_output=True, text=True, timeout=1200,
                          env={**__import__("os").environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["stage1", "stage2", "stage3"]
    shapes = [(s["shape"]["num_layers"], s["shape"]["hidden_size"], s["shape"]["num_attention_heads"])
              for s in summary["stages"]]
    assert shapes == [(4, 64, 4), (4, 128, 8), (8, 128, 8)]
    assert [g["name"] for g in summary["growth"]] == ["grow width", "grow depth"]
    for growth in summary["growth"]:
        assert 0.0 <= growth["max_abs_logit_diff"] < 1e-5
    params = [s["parameters"] for s in summary["stages"]]
    assert params[0] < params[1] < params[2]
    for stage in summary["stages"]:
        assert stage["flops"] > 0 and stage["final_valid_loss"] > 0
    evaluation = summary["evaluation"]
    assert set(evaluation) == {"final", "stage1", "stage1_no_teacher"}
    for result in evaluation.values():
        assert set(result["languages"]) == {"en", "zh"}
        reviews = result["zero_shot"]["reviews"]
        assert 0.0 <= reviews["accuracy"] <= 1.0 and reviews["samples"] == 60
        assert 0.5 <= reviews["majority_baseline"] <= 1.0 and 0.0 <= reviews["balanced_accuracy"] <= 1.0
    assert summary["teacher_signal_held_out_reviews"] == {k: v["zero_shot"]["reviews"] for k, v in evaluation.items()}
    export = summary["export"]  # the final model as a transformers folder, checked against the training model
    assert 0.0 <= export["max_abs_logit_diff"] <= 1e-5 and (Path(export["folder"]) / "config.json").is_file()
    assert export["greedy"]["en"].startswith("In the beginning") and export["greedy"]["zh"].startswith("起初")
    iq = evaluation["final"]["iq"]  # the final model on a small IQ suite, each score beside its baseline
    assert set(iq["families"]) == {"symbolic_mapping", "rule_understanding", "pattern_mining", "anti_interference"}
    assert all(0 <= r["score"] <= 1 and 0 < r["random_baseline"] < 1 for r in iq["subtests"].values())
    assert "IQ suite, final model" in proc.stdout
    assert (out / "loss.png").stat().st_size > 10_000
    assert any((out / "tensorboard" / "stage3").iterdir())
    assert "[demo" in proc.stdout and "max abs logit diff" in proc.stdout
