"""MSG operators on plain tensors (no process group): layouts, fills, optimizer state, refusals."""
import math

import pytest
import torch

from flm_ext.config import ConfigError, FLMConfig
from flm_ext.growth import (GrowthError, GrowthPlan, GrowthState, grow_layer, grow_tensor, grow_width,
                            split_layer_name)

OLD = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=16,
                vocab_size=40, init_method_std=0.05)
NEW = OLD.replace(hidden_size=48, num_attention_heads=6, ffn_hidden_size=96, num_layers=4)
QKV = "decoder.layers.self_attention.linear_qkv.weight"


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_qkv_keeps_old_heads_rows_and_appends_new_heads():
    """Rows are grouped per head [q_h, k_h, v_h] (head dim 8): old heads stay a prefix."""
    plan = GrowthPlan(OLD, NEW)
    old = _rand(2, 3 * 32, 32)
    new = grow_tensor(QKV, old, plan)
    assert new.shape == (4, 3 * 48, 48)
    per_head_old = old[0].view(4, 3, 8, 32)
    per_head_new = new[0].view(6, 3, 8, 48)
    assert torch.equal(per_head_new[:4, :, :, :32], per_head_old)  # q, k, v of each old head in place
    fresh = torch.cat([per_head_new[4:].flatten(), per_head_new[:4, :, :, 32:].flatten()])
    assert fresh.std().item() == pytest.approx(0.05, rel=0.15) and abs(fresh.mean().item()) < 0.01


def test_every_fill_rule_for_params():
    plan = GrowthPlan(OLD, NEW)
    cases = {  # key: (old layer slice shape, value expected in new entries: None = random normal)
        "decoder.layers.input_layernorm.weight": ((32,), 1.0),
        "decoder.layers.pre_mlp_layernorm.bias": ((32,), 0.0),
        "decoder.layers.self_attention.linear_qkv.bias": ((96,), 0.0),
        "decoder.layers.mlp.linear_fc1.bias": ((64,), 0.0),
        "decoder.layers.mlp.linear_fc2.bias": ((32,), 0.0),
        "decoder.layers.self_attention.linear_proj.weight": ((32, 32), None),
        "decoder.layers.mlp.linear_fc2.weight": ((32, 64), None),
        "embedding.word_embeddings.weight": ((40, 32), None),
        "decoder.final_layernorm.weight": ((32,), 1.0),
    }
    for key, (shape, fill) in cases.items():
        old = _rand(*shape) + 3.0
        new = grow_width(key, old, plan, layer=1 if key.startswith("decoder.layers.") else None)
        block = tuple(slice(0, n) for n in shape)
        assert torch.equal(new[block], old), key
        rest = torch.ones_like(new, dtype=torch.bool)
        rest[block] = False
        if fill is not None:
            assert torch.all(new[rest] == fill), key
        else:
            assert new[rest].std().item() == pytest.approx(plan.init_std(key), rel=0.2), key
            assert new[rest].mean().abs().item() < 0.2 * plan.init_std(key), key
            # seeded by (seed, key, layer): the same again, other numbers for another layer
            layer = 1 if key.startswith("decoder.layers.") else None
            assert torch.equal(grow_width(key, old, plan, layer=layer), new), key
            if layer is not None:
                assert not torch.equal(grow_width(key, old, plan, layer=2)[rest], new[rest]), key
    # Projections back into the residual stream use megatron's scaled init (new config's 4 layers).
    assert plan.init_std("decoder.layers.mlp.linear_fc2.weight") == pytest.approx(0.05 / math.sqrt(8))
    assert plan.init_std("embedding.word_embeddings.weight") == pytest.approx(0.05)


def test_adam_moments_copy_old_slices_and_zero_the_rest_new_layers_empty():
    plan = GrowthPlan(OLD, NEW, depth_init="stack", depth_placement="interleave")
    key = "decoder.layers.mlp.linear_fc1.weight"
    for role in ("exp_avg", "exp_avg_sq"):
        old = _rand(2, 64, 32).abs() + 0.5  # no zeros in the old state
        new = grow_tensor(key, old, plan, role=role)
        assert new.shape == (4, 96, 48)
        assert plan.layer_sources() == ((0, False), (0, True), (1, False), (1, True))
        for j, (src, is_new) in enumerate(plan.layer_sources()):
            if is_new:
                assert torch.count_nonzero(new[j]) == 0  # stacked copies start with empty state
            else:
                assert torch.equal(new[j, :64, :32], old[src])
                assert torch.count_nonzero(new[j]) == 64 * 32
    # Weights, by contrast, are stacked: new layer 1 is a copy of old layer 0 (widened with its own draws).
    weights = _rand(2, 64, 32)
    params = grow_tensor(key, weights, plan)
    assert torch.equal(params[1, :64, :32], weights[0]) and torch.equal(params[3, :64, :32], weights[1])
    assert not torch.equal(params[1, 64:], params[0, 64:])


def test_new_weights_are_reproducible_across_calls_and_dtypes():
    """A bf16 weight and its fp32 main copy, grown separately, get the same new values."""
    plan = GrowthPlan(OLD, NEW, depth_init="random", seed=7)
    old = _rand(2, 64, 32)
    a = grow_tensor("decoder.layers.mlp.linear_fc1.weight", old, plan)
    b = grow_tensor("decoder.layers.mlp.linear_fc1.weight", old.bfloat16(), plan)
    assert torch.equal(a.bfloat16(), b)
    assert not torch.equal(a[2], a[3])  # distinct layers, distinct draws
    other = grow_tensor("decoder.layers.mlp.linear_fc1.weight", old, GrowthPlan(OLD, NEW, depth_init="random", seed=8))
    assert not torch.equal(a[2], other[2])


def test_layer_placement_and_streaming_loads_only_needed_layers():
    deep = OLD.replace(num_layers=3)
    cases = {
        ("top", 6): ((0, False), (1, False), (2, False), (0, True), (1, True), (2, True)),
        ("top", 4): ((0, False), (1, False), (2, False), (2, True)),
        ("interleave", 6): ((0, False), (0, True), (1, False), (1, True), (2, False), (2, True)),
        ("interleave", 4): ((0, False), (1, False), (2, False), (2, True)),
        ("interleave", 5): ((0, False), (1, False), (1, True), (2, False), (2, True)),
    }
    for (placement, layers), expected in cases.items():
        plan = GrowthPlan(deep, deep.replace(num_layers=layers), depth_placement=placement)
        assert plan.layer_sources() == expected, (placement, layers)
        assert plan.new_layers == tuple(j for j, (_, new) in enumerate(expected) if new)
    random = GrowthPlan(deep, deep.replace(num_layers=4), depth_init="random")
    assert random.layer_sources()[-1] == (None, True)
    loaded = []
    old = _rand(3, 32)

    def load(i):
        loaded.append(i)
        return old[i]
    key = "decoder.layers.input_layernorm.weight"
    out = grow_layer(key, load, random, 3, dtype=torch.float32)
    assert loaded == [] and torch.equal(out, torch.ones(32))
    assert torch.equal(grow_layer(key, load, random, 1), old[1]) and loaded == [1]


def test_mup_width_growth_moves_the_logit_scale_into_the_final_norm():
    mup = dict(use_mup=True, mup_base_width=8, mup_output_mult=2.0)  # m: 4 -> 6
    plan = GrowthPlan(OLD.replace(**mup), NEW.replace(**mup))
    assert plan.logits_rescale == pytest.approx(6 / 4)
    old = _rand(32) + 2
    for role, factor in (("param", 1.5), ("exp_avg", 1 / 1.5), ("exp_avg_sq", 1 / 2.25)):
        for key in ("decoder.final_layernorm.weight", "decoder.final_layernorm.bias"):
            new = grow_width(key, old, plan, role=role)
            assert torch.allclose(new[:32], old * factor, rtol=1e-6), (key, role)
    # Only the final norm: per-layer norms are unchanged.
    assert torch.equal(grow_width("decoder.layers.input_layernorm.weight", old, plan, layer=0)[:32], old)
    # Holding m fixed instead (mup_width_mult_override = old m) needs no rescale.
    fixed = GrowthPlan(OLD.replace(**mup), NEW.replace(**mup, mup_width_mult_override=4.0))
    assert fixed.logits_rescale == 1.0
    # µP init of new matrices uses the grown config's m: sigma / sqrt(6).
    assert plan.init_std(QKV) == pytest.approx(0.05 / math.sqrt(6))


@pytest.mark.parametrize("change, match", [
    (dict(hidden_size=16, num_attention_heads=2), "shrink hidden_size"),
    (dict(num_layers=1), "shrink num_layers"),
    (dict(ffn_hidden_size=32), "shrink ffn_hidden_size"),
    (dict(num_attention_heads=8), "head_dim 8 -> 4"),
    (dict(vocab_size=48), "vocab_size"),
    (dict(use_mup=True), "use_mup"),
])
def test_refusals_name_the_bad_value(change, match):
    with pytest.raises(GrowthError, match=match):
        GrowthPlan(OLD, OLD.replace(**change))


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="hidden_size=40 is not divisible by num_attention_heads=6"):
        GrowthPlan(OLD, OLD.replace(hidden_size=40, num_attention_heads=6))
    plan = GrowthPlan(OLD, NEW)
    with pytest.raises(GrowthError, match="depth_init='copy'"):
        GrowthPlan(OLD, NEW, depth_init="copy")
    with pytest.raises(GrowthError, match="no growth rule for tensor 'decoder.layers.foo'"):
        grow_width("decoder.layers.foo", torch.zeros(3), plan)
    with pytest.raises(GrowthError, match=r"shape \(2, 96, 32\).*one layer's slice"):
        grow_width(QKV, torch.zeros(2, 96, 32), plan)
    with pytest.raises(GrowthError, match="role='momentum'"):
        grow_width("decoder.final_layernorm.bias", torch.zeros(32), plan, role="momentum")
    with pytest.raises(GrowthError, match="2 layers on axis 0"):
        grow_tensor(QKV, torch.zeros(3, 96, 32), plan)


def test_growth_state_round_trips_and_ramps():
    plan = GrowthPlan(OLD, NEW, depth_placement="interleave")
    state = GrowthState.from_plan(plan, ramp_steps=100, start_iteration=1000)
    data = state.to_dict()
    assert [(c["axis"], c["old"], c["new"]) for c in data["changes"]] == [
        ("hidden", 32, 48), ("heads", 4, 6), ("ffn", 64, 96), ("layers", 2, 4)]
    assert data["changes"][3]["positions"] == [1, 3] and data["ramp_steps"] == 100
    assert GrowthState.from_dict(data) == state
    assert [state.lambda_at(i) for i in (0, 1000, 1025, 1100, 5000)] == [0.0, 0.0, 0.25, 1.0, 1.0]
    assert state.replace(ramp_steps=0).lambda_at(1000) == 1.0
    assert state.change("heads").is_new().tolist() == [False] * 96 + [True] * 48  # 3 x head_dim 8 rows per head
    assert state.change("layers").is_new().tolist() == [False, True, False, True]
    assert GrowthState.from_plan(GrowthPlan(OLD, OLD.replace(num_layers=3)), 5).to_dict()["changes"] == [
        {"axis": "layers", "old": 2, "new": 3, "positions": [2], "unit": 1, "method": "msg", "knobs": {}}]
    with pytest.raises(GrowthError, match="unknown growth state field"):
        GrowthState.from_dict({**data, "lam": 0.5})
    with pytest.raises(GrowthError, match=r"lacks field\(s\) \['ramp_steps'\]"):
        GrowthState.from_dict({k: v for k, v in data.items() if k != "ramp_steps"})
    with pytest.raises(GrowthError, match="unknown growth axis 'vocab'"):
        GrowthState.from_dict({**data, "changes": [{"axis": "vocab", "old": 40, "new": 48}]})
    with pytest.raises(GrowthError, match="ramp_steps=-1"):
        state.replace(ramp_steps=-1)
    with pytest.raises(GrowthError, match=r"layers: positions=\[7, 1\]"):
        GrowthState.from_dict({**data, "changes": [{**data["changes"][3], "positions": [7, 1]}]})


def test_a_record_from_before_the_per_axis_list_still_loads():
    """Checkpoints grown before GrowthState held a list stored one old/new pair per axis."""
    old_style = {"num_layers": 4, "hidden_size": 48, "old_hidden_size": 32, "num_attention_heads": 6,
                 "old_num_attention_heads": 4, "head_dim": 8, "ffn_hidden_size": 96, "old_ffn_hidden_size": 64,
                 "new_layers": [1, 3], "ramp_steps": 100, "start_iteration": 1000}
    state = GrowthState.from_dict(old_style)
    assert state == GrowthState.from_plan(GrowthPlan(OLD, NEW, depth_placement="interleave"), 100, 1000)
    assert state.change("hidden").is_new().tolist() == [False] * 32 + [True] * 16
    depth_only = {**old_style, "hidden_size": 32, "num_attention_heads": 4, "ffn_hidden_size": 64}
    assert [c.axis for c in GrowthState.from_dict(depth_only).changes] == ["layers"]
    with pytest.raises(GrowthError, match="old=48 exceeds new=32"):
        GrowthState.from_dict({**old_style, "hidden_size": 32, "old_hidden_size": 48})
    with pytest.raises(GrowthError, match=r"lacks field\(s\) \['head_dim'\]"):
        GrowthState.from_dict({k: v for k, v in old_style.items() if k != "head_dim"})


def test_split_layer_name():
    assert split_layer_name("module.decoder.layers.3.mlp.linear_fc1.weight", layer_offset=4) == (
        "decoder.layers.mlp.linear_fc1.weight", 7)
    assert split_layer_name("embedding.word_embeddings.weight") == ("embedding.word_embeddings.weight", None)
