"""Grown weights with masks, loaded at TP=2 (with and without sequence parallel), PP=2 and PP=2 x VPP=2."""
import torch

from distributed import spawn
from growth_workers import LAYOUTS, grown_parity


def test_grown_model_keeps_the_logits_at_tp2_sp_pp2_and_vpp2(tmp_path):
    spawn(grown_parity, 2, tmp_path)
    result = torch.load(tmp_path / "grown_parity.pt")
    assert result["ref_abs_max"] > 0.1
    assert result["mid_vs_ref"] > 1e-3  # at lambda 0.4 the new coordinates do contribute
    assert set(result["diffs"]) == set(LAYOUTS) | {name + "@mid" for name in LAYOUTS}
    for layout, diff in result["diffs"].items():
        # plain names: vs the original TP=1 model at lambda 0; "@mid": vs the grown TP=1 model at 0.4
        assert 0.0 <= diff <= 1e-5, f"{layout}: max abs logit diff {diff}"
