"""µP coordinate check (flm_ext.mup.coord_check): after a few AdamW steps, activation sizes are
flat in width under µP and grow with width in the standard parametrisation; and the check fails
when one µP rule (the hidden-matrix LR eta/m) is taken out, so it can catch a broken µP."""
from __future__ import annotations

import pytest

from flm_ext.mup import coord_check

WIDTHS = [32, 64, 128]
KW = dict(seeds=(1,), steps=8, lr=1e-3)


@pytest.fixture(scope="module")
def results(megatron_single_process):
    return (coord_check.run_coord_check(WIDTHS, use_mup=True, **KW),
            coord_check.run_coord_check(WIDTHS, use_mup=False, **KW))


def test_mup_is_flat_and_standard_parametrisation_drifts(results, tmp_path):
    mup, sp = results
    expected = {"embedding", "final_norm", "logits"} | {f"{k}.{i}" for k in ("attn", "mlp", "block") for i in (0, 1)}
    assert set(mup.stats) == expected
    mup_slopes, sp_slopes = mup.slopes(), sp.slopes()
    # Hidden-matrix outputs: flat under µP; SP with the same LR grows at least linearly with width.
    for key, slope in mup_slopes.items():
        assert abs(slope) < 0.25, (key, mup_slopes)
    for key in ("mlp.0", "mlp.1"):
        assert sp_slopes[key] > 0.8, (key, sp_slopes)
    for key in ("attn.0", "attn.1", "block.0", "block.1", "logits"):
        assert sp_slopes[key] > 0.3, (key, sp_slopes)
    ok, text = coord_check.verdict(mup, sp)
    assert ok, text
    # Before any update µP and SP differ as the init rules say: µP's hidden outputs are flat
    # (std sigma/sqrt(m)); in SP (fixed std) each of the MLP's two matrices multiplies the size by
    # sqrt(width), so its output grows like width; the logits (fixed std, no 1/m) like sqrt(width).
    assert abs(mup.slopes(step=0)["mlp.0"]) < 0.1
    assert sp.slopes(step=0)["mlp.0"] == pytest.approx(1.0, abs=0.2)
    assert sp.slopes(step=0)["logits"] == pytest.approx(0.5, abs=0.15)
    assert mup.slopes(step=0)["logits"] == pytest.approx(-0.5, abs=0.15)  # µP: 1/m readout, O(1/sqrt(width))
    path = tmp_path / "coord.png"
    coord_check.plot_coord_check([mup, sp], str(path))
    assert path.stat().st_size > 20_000


def test_check_fails_without_the_mup_learning_rate_rule(results, monkeypatch):
    """µP init and multipliers kept, but every parameter trained with the base LR: the hidden
    activations drift again and the verdict must say so."""
    import flm_ext.training.engine as engine

    mup, sp = results
    monkeypatch.setattr(engine, "mup_optimizer_overrides", lambda *args, **kwargs: {})
    broken = coord_check.run_coord_check(WIDTHS, use_mup=True, **KW)
    assert broken.slopes()["mlp.0"] > 0.4, broken.slopes()
    ok, text = coord_check.verdict(broken, sp)
    assert not ok and "µP: largest |slope|" in text
