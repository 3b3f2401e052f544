"""MSG growth in one process: each operator alone and width + depth together preserve the logits.

The reference for "function preserved" is the pre-growth model itself (and, for the masks at an
intermediate lambda, the independent float64 MSG forward in reference_msg.py).
"""
import dataclasses

import pytest
import torch

import reference_flm
import reference_msg
from flm_ext.config import FLMConfig, num_parameters
from flm_ext.growth import (GrowthError, GrowthPlan, GrowthState, apply_growth_schedule, attach_growth,
                            drop_growth_masks, grow_state_dict, growth_lambda, set_growth_lambda)
from flm_ext.model.flm_model import build_model_chunks
from flm_ext.model.global_weights import global_state_dict, iter_sharded_tensors, load_global_state_dict

BASE = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=96, seq_length=24,
                 vocab_size=96, init_method_std=0.1)
MUP = dict(use_mup=True, mup_base_width=8, mup_output_mult=2.0, mup_input_mult=1.5)  # m = 4 -> 6 on hidden growth

# name: (old overrides, new overrides, plan options). kv_channels=8 decouples heads from hidden so
# that hidden and heads can each grow alone with the head size fixed.
GROWTHS = {
    "hidden": (dict(kv_channels=8), dict(kv_channels=8, hidden_size=48), {}),
    "heads": (dict(kv_channels=8), dict(kv_channels=8, num_attention_heads=6), {}),
    "ffn": ({}, dict(ffn_hidden_size=160), {}),
    "depth-stack-top": ({}, dict(num_layers=4), dict(depth_init="stack", depth_placement="top")),
    "depth-random-top": ({}, dict(num_layers=4), dict(depth_init="random", depth_placement="top")),
    "depth-stack-interleave": ({}, dict(num_layers=3), dict(depth_init="stack", depth_placement="interleave")),
    "depth-random-interleave": ({}, dict(num_layers=4), dict(depth_init="random", depth_placement="interleave")),
    "width+depth": ({}, dict(hidden_size=48, num_attention_heads=6, ffn_hidden_size=160, num_layers=3), {}),
    "width-untied-output": (dict(share_embeddings_and_output_weights=False),
                            dict(share_embeddings_and_output_weights=False, hidden_size=48, num_attention_heads=6),
                            {}),
}


def _ids(cfg, seed=0):
    return torch.randint(0, cfg.vocab_size, (2, cfg.seq_length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids, torch.arange(ids.shape[1]).expand_as(ids), None)


def _grown(name, mup, seed=1):
    old_kw, new_kw, plan_kw = GROWTHS[name]
    extra = MUP if mup else {}
    old, new = BASE.replace(**old_kw, **extra), BASE.replace(**new_kw, **extra)
    torch.manual_seed(seed)  # the same weights whatever ran before in this process
    [model] = build_model_chunks(old)
    state = global_state_dict([model])
    plan = GrowthPlan(old, new, seed=seed, **plan_kw)
    [grown] = build_model_chunks(new)
    load_global_state_dict([grown], grow_state_dict(state, plan))
    return model, grown, plan, state


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("mup", [False, True], ids=["plain", "mup"])
@pytest.mark.parametrize("name", list(GROWTHS))
def test_grown_model_at_lambda_zero_keeps_the_logits(megatron_single_process, name, mup):
    model, grown, plan, _ = _grown(name, mup)
    ids = _ids(plan.old)
    before = _logits(model, ids)
    assert before.abs().max() > 0.1  # non-trivial logits (µP scales them by output_mult / m)
    hooks = _hook_count(grown)
    attach_growth([grown], GrowthState.from_plan(plan, ramp_steps=4))
    assert (_logits(grown, ids) - before).abs().max().item() <= 1e-5

    # The masks matter: the grown weights alone compute something else ...
    set_growth_lambda([grown], 1.0)
    at_one = _logits(grown, ids)
    drop_growth_masks([grown])
    assert _hook_count(grown) == hooks  # nothing left behind: the model runs as a plain FLM model
    unmasked = _logits(grown, ids)
    assert (unmasked - before).abs().max().item() > 1e-3
    # ... and at lambda = 1 the masks are the identity, so dropping them changes nothing.
    assert (at_one - unmasked).abs().max().item() <= 1e-5


def test_masks_follow_the_msg_equations_at_intermediate_lambda(megatron_single_process):
    """Against an independent float64 MSG forward: hidden, head, FFN masks and layer gates at 0.37."""
    for mup in (False, True):
        model, grown, plan, old_state = _grown("width+depth", mup)
        ids = _ids(plan.old)
        growth = dict(old_hidden=plan.old.hidden_size, old_heads=plan.old.num_attention_heads,
                      old_ffn=plan.old.ffn_hidden_size, new_layers=plan.new_layers)
        grown_state = global_state_dict([grown])
        # The reference at lambda 0 on the grown weights is the reference of the old model: the
        # operators alone (without flm_ext's masks) preserve the function.
        ref0 = reference_msg.logits(grown_state, plan.new, ids, lam=0.0, **growth)
        assert (ref0 - reference_flm.logits(old_state, plan.old, ids)).abs().max().item() <= 1e-9
        attach_growth([grown], GrowthState.from_plan(plan, ramp_steps=4), lam=0.37)
        assert growth_lambda([grown]) == pytest.approx(0.37)
        got = _logits(grown, ids).double()
        ref = reference_msg.logits(grown_state, plan.new, ids, lam=0.37, **growth)
        assert (got - ref).abs().max().item() <= 5e-5
        assert (ref - ref0).abs().max().item() > 1e-2  # lambda really changes the function
        drop_growth_masks([grown])


def test_masks_are_not_parameters_or_checkpoint_state(megatron_single_process):
    _, grown, plan, _ = _grown("width+depth", True)
    keys = sorted(sh.key for sh in iter_sharded_tensors([grown]))
    names = sorted(grown.state_dict())
    attach_growth([grown], GrowthState.from_plan(plan, ramp_steps=4), lam=0.5)
    assert sorted(sh.key for sh in iter_sharded_tensors([grown])) == keys
    assert sorted(grown.state_dict()) == names
    assert not any(buf.numel() for buf in grown.buffers())
    with pytest.raises(GrowthError, match="already attached"):
        attach_growth([grown], GrowthState.from_plan(plan, ramp_steps=4))
    drop_growth_masks([grown])
    with pytest.raises(GrowthError, match="attach_growth first"):
        set_growth_lambda([grown], 0.5)


def test_growth_state_must_match_the_model(megatron_single_process):
    _, grown, plan, _ = _grown("ffn", False)
    state = GrowthState.from_plan(plan, ramp_steps=4)
    wrong = state.replace(changes=[dataclasses.replace(state.change("ffn"), new=192)])
    with pytest.raises(GrowthError, match="ffn_hidden_size=192"):
        attach_growth([grown], wrong)
    attach_growth([grown], GrowthState.from_plan(plan, ramp_steps=4))
    with pytest.raises(GrowthError, match="lambda=1.5"):
        set_growth_lambda([grown], 1.5)
    drop_growth_masks([grown])


def test_schedule_ramps_then_drops(megatron_single_process):
    _, grown, plan, _ = _grown("width+depth", False)
    state = GrowthState.from_plan(plan, ramp_steps=4, start_iteration=10)
    seen = [apply_growth_schedule([grown], state, it) for it in range(10, 16)]
    assert seen == [0.0, 0.25, 0.5, 0.75, None, None]
    assert growth_lambda([grown]) is None and getattr(grown, "_flm_growth") is None
    assert apply_growth_schedule([grown], None, 3) is None


def test_decoupled_head_size_model_matches_the_reference(megatron_single_process):
    """kv_channels (heads x head size != hidden, as "hidden" / "heads" growth produce) is a real FLM model."""
    for name in ("hidden", "heads"):
        _, grown, plan, _ = _grown(name, mup=True)
        assert plan.new.attention_width != plan.new.hidden_size
        assert sum(p.numel() for p in grown.parameters()) == num_parameters(plan.new)
        ids = _ids(plan.new)
        expected = reference_flm.logits(global_state_dict([grown]), plan.new, ids)
        assert (_logits(grown, ids).double() - expected).abs().max().item() <= 5e-5
