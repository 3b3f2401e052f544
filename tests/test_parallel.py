"""TP / PP / SP / virtual PP / DP on 2 real gloo processes against the unsplit model."""
import torch

from distributed import spawn
from parallel_workers import LAYOUTS, TRAIN_LAYOUTS, forward_parity, train_parity


def test_same_weights_give_same_logits_at_every_layout(tmp_path):
    spawn(forward_parity, 2, tmp_path)
    result = torch.load(tmp_path / "forward_parity.pt")
    assert result["ref_abs_max"] > 0.1  # logits are not trivially zero
    assert set(result["diffs"]) == set(LAYOUTS) | {"fresh_tp2", "fresh_pp2"}
    for layout, diff in result["diffs"].items():
        assert 0.0 <= diff <= 1e-5, f"{layout}: max abs logit diff {diff} vs TP=1"


def test_training_steps_agree_across_tp_pp_dp(tmp_path):
    spawn(train_parity, 2, tmp_path)
    results = torch.load(tmp_path / "train_parity.pt")
    assert set(results) == set(TRAIN_LAYOUTS)
    reference = results["dp2"]["losses"]
    assert reference[-1] < reference[0] - 0.3, f"loss did not fall: {reference}"
    for layout, result in results.items():
        for step, (loss, ref) in enumerate(zip(result["losses"], reference)):
            assert abs(loss - ref) <= 1e-5 * abs(ref), f"{layout} step {step}: loss {loss} vs DP=2 {ref}"
        assert result["replica_spread"] == 0.0, f"{layout}: data-parallel replicas diverged"
