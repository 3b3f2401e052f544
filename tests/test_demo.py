"""A small version of `make demo`: the whole recipe in miniature, with few steps per stage."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import reference_zero_shot

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the recipe's own subprocess limit is 1200 s (a busy 2-core machine)
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
        assert reviews["samples"] == 60 and 0.5 <= reviews["majority_baseline"] <= 1.0
    assert summary["teacher_signal_held_out_reviews"] == {k: v["zero_shot"]["reviews"] for k, v in evaluation.items()}
    export = summary["export"]  # the final model as a transformers folder, checked against the training model
    assert 0.0 <= export["max_abs_logit_diff"] <= 1e-5 and (Path(export["folder"]) / "config.json").is_file()
    # the final model's zero-shot answers, recomputed with the export under transformers
    answers = reference_zero_shot.margins(export["folder"], str(Path(summary["data"]["corpus"]) / "teacher_valid.jsonl"),
                                          60)
    reference_zero_shot.check_accuracy(evaluation["final"]["zero_shot"]["reviews"], answers)
    assert export["greedy"]["en"].startswith("In the beginning") and export["greedy"]["zh"].startswith("起初")
    iq = evaluation["final"]["iq"]  # the final model on a small IQ suite, each score beside its baseline
    assert set(iq["families"]) == {"symbolic_mapping", "rule_understanding", "pattern_mining", "anti_interference"}
    assert all(0 <= r["score"] <= 1 and 0 < r["random_baseline"] < 1 for r in iq["subtests"].values())
    assert "IQ suite, final model" in proc.stdout
    assert (out / "loss.png").stat().st_size > 10_000
    assert any((out / "tensorboard" / "stage3").iterdir())
    assert "[demo" in proc.stdout and "max abs logit diff" in proc.stdout
    check_summary_against_the_run(out, summary)


def model_tensors(checkpoint) -> dict[str, tuple[int, ...]]:
    """The model's tensors (global shapes) in a checkpoint's torch_dist metadata, optimizer left out."""
    from flm_ext.checkpoint import open_checkpoint

    reader = open_checkpoint(str(checkpoint)).reader  # verified: every file's checksum
    return {k: tuple(v.size) for k, v in reader.tensors.items() if not k.startswith("optimizer.")}


def metrics(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_summary_against_the_run(out: Path, summary: dict) -> None:
    """summary.json against facts it does not compute: the tensors in each checkpoint, the trainer's
    metrics files, the evaluation files, the held-out labels, the plot and the TensorBoard events."""
    seq, global_batch = 128, 16  # the recipe's batch shape (flm_ext/recipe.py RecipeConfig)
    for stage in summary["stages"] + [summary["control_no_teacher"]]:
        tensors = model_tensors(stage["checkpoint"])
        n = sum(math.prod(shape) for shape in tensors.values())  # the tied embedding is stored once
        assert stage["parameters"] == n, (stage["name"], stage["parameters"], n)
        layers, hidden = tensors["decoder.layers.input_layernorm.weight"]  # stacked [L, h]
        assert (layers, hidden) == (stage["shape"]["num_layers"], stage["shape"]["hidden_size"])
        rows = metrics(stage["metrics"])
        train = [r for r in rows if "train/loss" in r]
        valid = [r for r in rows if "valid/loss" in r]
        steps = max(r["iteration"] for r in rows)
        assert stage["steps"] == steps and stage["tokens"] == steps * global_batch * seq == train[-1]["train/tokens"]
        # training FLOPs: 6 per parameter per token, plus the attention score and context products
        assert stage["flops"] == pytest.approx(stage["tokens"] * (6 * n + 12 * layers * hidden * seq), rel=1e-12)
        assert stage["final_train_loss"] == train[-1]["train/loss"]
        assert stage["final_valid_loss"] == valid[-1]["valid/loss"] and math.isfinite(valid[-1]["valid/loss"])
    assert summary["total_flops"] == pytest.approx(sum(s["flops"] for s in summary["stages"]), rel=1e-12)
    # each growth wrote a checkpoint of exactly the next stage's tensors
    for growth, stage in zip(summary["growth"], summary["stages"][1:]):
        assert model_tensors(growth["checkpoint"]) == model_tensors(stage["checkpoint"])
    # the evaluation files are the ones summarised; the majority baseline from the held-out labels
    labels = [json.loads(line)["label"] for line in
              (Path(summary["data"]["corpus"]) / "teacher_valid.jsonl").read_text().splitlines()[:60]]
    for key, result in summary["evaluation"].items():
        assert json.loads((out / f"eval_{key}.json").read_text()) == result
        reviews = result["zero_shot"]["reviews"]
        assert reviews["majority_baseline"] == pytest.approx(max(labels.count(True), labels.count(False)) / 60)
        assert math.isfinite(result["languages"]["en"]["perplexity"])
    # the plot is an image; TensorBoard holds the same training losses as the metrics file
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Image.open(out / "loss.png") as image:
        assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 300
    for stage in summary["stages"]:
        events = EventAccumulator(str(out / "tensorboard" / stage["name"])).Reload()
        logged = {e.step: e.value for e in events.Scalars("train/loss")}
        expected = {r["iteration"]: r["train/loss"] for r in metrics(stage["metrics"]) if "train/loss" in r}
        assert logged.keys() == expected.keys()
        assert all(abs(logged[k] - expected[k]) <= 1e-6 * abs(expected[k]) for k in expected)  # stored as float32
