"""µScaling fit (flm_ext.mup.scaling_fit + `predict_loss.py fit/check`): the published GPT-2 width
series, exact recovery of a known power law, bad runs reported instead of crashing, check arithmetic."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from flm_ext.mup import cli, scaling_fit

REPO = Path(__file__).resolve().parents[1]
GPT2_CSV = REPO / "examples" / "muscaling_gpt2.csv"
RECIPE = REPO / "docs" / "FLM.md"


def _csv_rows():
    rows = [line.split(",") for line in GPT2_CSV.read_text().splitlines()
            if line and not line.startswith("#")][1:]
    return [(name, float(size), float(loss)) for name, size, loss in rows]


def _recipe_gpt2_table():
    """(width, params, loss) rows of the table under docs/FLM.md's '5.1 The published µScaling GPT-2 series'."""
    text = RECIPE.read_text()
    section = text[text.index("### 5.1 The published µScaling GPT-2 series"):]
    section = section[:section.index("\n#")]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["width", "params (M)", "loss"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return [(int(w), p, loss) for w, p, loss in rows]


def test_csv_matches_the_recipe_table():
    """The CSV the example and tests use is docs/FLM.md's published table, transcribed field by field."""
    table = _recipe_gpt2_table()
    raw = [line.split(",") for line in GPT2_CSV.read_text().splitlines() if line and not line.startswith("#")]
    assert raw[0] == ["name", "size", "loss"]
    assert len(table) == len(raw[1:]) == 10
    for (width, params_m, loss_text), (name, size, loss) in zip(table, raw[1:]):
        assert name == f"w{width}"
        assert int(size) == round(float(params_m) * 1e6), (name, size, params_m)  # millions -> count
        assert loss == loss_text, (name, loss, loss_text)  # the same digits


def test_fit_on_published_muscaling_numbers_predicts_the_three_largest_within_half_a_percent(tmp_path, capsys):
    out = tmp_path / "fit"
    assert cli.main(["fit", "--points", str(GPT2_CSV), "--fit-first", "7", "--output", str(out)]) == 0
    result = json.loads((out / "fit.json").read_text())
    actual = {name: loss for name, _size, loss in _csv_rows()}
    targets = {t["name"]: t for t in result["targets"]}
    assert sorted(targets) == ["w1024", "w2048", "w3072"]
    for name, t in targets.items():
        error = (t["predicted"] - actual[name]) / actual[name]
        assert abs(error) < 0.005, (name, error)
        assert t["relative_error"] == pytest.approx(error)
        assert t["stderr"] is not None and t["stderr"] > 0
    # The fitted law reproduces the 7 points it was fitted on closely, with a loss-like exponent.
    fit = result["fit"]
    assert -1.0 < fit["b"] < 0 and 2.5 < fit["c"] < 3.2 and fit["rmse"] < 0.01
    assert (out / "fit.png").stat().st_size > 10_000
    assert "w3072" in capsys.readouterr().out


def test_fit_recovers_an_exact_power_law():
    sizes = np.geomspace(1e5, 1e7, 6)
    a, b, c = 40.0, -0.31, 1.7
    fit = scaling_fit.fit_power_law(sizes, a * sizes ** b + c)
    assert fit.b == pytest.approx(b, abs=1e-6)
    assert fit.c == pytest.approx(c, abs=1e-6)
    assert fit.a == pytest.approx(a, rel=1e-5)
    assert fit.predict(1e9) == pytest.approx(a * 1e9 ** b + c, rel=1e-7)
    assert fit.stderr(1e9) == pytest.approx(0.0, abs=1e-6)


def _sweep_json(path: Path, losses: dict[int, float | None], statuses: dict[int, str] | None = None) -> Path:
    """A sweep.json like `sweep` writes (vocab 1024, 2 layers of width w) with the given final losses."""
    from flm_ext.config import FLMConfig

    points = []
    for w, loss in losses.items():
        model = FLMConfig(num_layers=2, hidden_size=w, num_attention_heads=w // 16, vocab_size=1024)
        sizes = cli.model_sizes(model)
        points.append({"width": w, **sizes, "name": f"w{w}", "status": (statuses or {}).get(w, "ok"),
                       "losses": {"300": loss}})
    path.write_text(json.dumps({"hyper_parameters": {}, "metric": "valid", "steps": [300], "pretrain_flags": [],
                                "points": points}))
    return path


def test_fit_reports_bad_runs_and_fits_the_rest(tmp_path, capsys):
    from flm_ext.config import FLMConfig

    law = lambda n: 50.0 * n ** -0.3 + 2.0  # noqa: E731
    good = {w: law(cli.model_sizes(FLMConfig(num_layers=2, hidden_size=w, num_attention_heads=w // 16,
                                              vocab_size=1024))["total"]) for w in (32, 48, 64, 96, 128)}
    bad = dict(good)
    bad[48] = math.nan  # diverged: NaN loss
    bad[64] = 9.0  # above ln(1024) = 6.93: not learning
    bad[96] = None  # never logged
    statuses = {128: "failed"}  # the run exited with an error
    bad[160] = law(cli.model_sizes(FLMConfig(num_layers=2, hidden_size=160, num_attention_heads=10,
                                             vocab_size=1024))["total"])
    bad[192] = law(cli.model_sizes(FLMConfig(num_layers=2, hidden_size=192, num_attention_heads=12,
                                             vocab_size=1024))["total"])
    sweep = _sweep_json(tmp_path / "sweep.json", bad, statuses)
    out = tmp_path / "fit"
    assert cli.main(["fit", "--sweep", str(sweep), "--target-params", "1e7", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    for name, why in (("w48", "loss is nan"), ("w64", "not learning"), ("w96", "no loss recorded"),
                      ("w128", "run failed")):
        assert re.search(rf"WARNING: {name} .*{why}", text), (name, text)
    result = json.loads((out / "fit.json").read_text())
    assert sorted(r["name"] for r in result["rejected"]) == ["w128", "w48", "w64", "w96"]
    assert len(result["fit"]["sizes"]) == 3  # w32, w160, w192: an exact fit of the law
    assert result["targets"][0]["predicted"] == pytest.approx(law(1e7), rel=1e-6)

    # Too few usable points: a clear error, exit code 2, no traceback.
    only_two = _sweep_json(tmp_path / "two.json", {32: good[32], 48: math.nan, 64: good[64]})
    assert cli.main(["fit", "--sweep", str(only_two), "--output", str(out)]) == 2
    assert "need at least 3 distinct sizes" in capsys.readouterr().err


def test_fit_bad_input_names_the_file(tmp_path, capsys):
    assert cli.main(["fit", "--sweep", str(tmp_path / "missing.json")]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("width,loss\n1,2\n")
    assert cli.main(["fit", "--points", str(bad_csv)]) == 2
    assert "bad.csv: need a header with columns 'size' and 'loss'" in capsys.readouterr().err


def test_check_arithmetic(tmp_path, capsys):
    result = cli.check_prediction(3.1, 3.0, 0.05)
    assert result["absolute_error"] == pytest.approx(0.1)
    assert result["relative_error"] == pytest.approx(0.1 / 3.0)
    assert result["sigmas"] == pytest.approx(2.0)
    assert cli.check_prediction(2.0, 2.5)["sigmas"] is None
    with pytest.raises(cli.UsageError, match="finite positive"):
        cli.check_prediction(2.0, math.nan)

    # The CLI: fit the published numbers, predict N = 676.48M, check against its published loss.
    out = tmp_path / "fit"
    assert cli.main(["fit", "--points", str(GPT2_CSV), "--fit-first", "7", "--output", str(out)]) == 0
    pred = json.loads((out / "fit.json").read_text())
    w2048 = next(t for t in pred["targets"] if t["name"] == "w2048")
    assert cli.main(["check", "--prediction", str(out / "fit.json"), "--target", "w2048",
                     "--actual-loss", "3.0854"]) == 0
    check = json.loads((out / "check.json").read_text())
    assert check["relative_error"] == pytest.approx((w2048["predicted"] - 3.0854) / 3.0854)
    assert check["sigmas"] == pytest.approx(abs(w2048["predicted"] - 3.0854) / w2048["stderr"])
    assert "w2048" in capsys.readouterr().out and (out / "check.png").exists()


@pytest.mark.parametrize("losses, why", [
    ([3.0, 3.1, 3.2, 3.3, 3.4], "does not decrease with N (a <= 0)"),  # worse with size
    ([3.4, 3.3, 3.2, 3.1, 3.0], "exponent at the edge of the range"),  # log-linear: no power law with a floor
])
def test_fit_refuses_a_law_that_is_no_decreasing_power_law(tmp_path, capsys, losses, why):
    """Such series used to give a confident prediction (+- 0.0000) from a meaningless law."""
    csv_path = tmp_path / "points.csv"
    csv_path.write_text("name,size,loss\n" + "".join(f"p{i},{1e6 * 2 ** i:g},{loss}\n" for i, loss in enumerate(losses)))
    assert cli.main(["fit", "--points", str(csv_path), "--target-params", "1e8", "--output", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "no prediction" in err and why in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f" / "fit.json").exists()
