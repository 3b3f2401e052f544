"""The growth operators of flm_ext/growth/methods on real megatron models, in float64 at TP=1:
what each claims about the function, the optimizer rule each states (checked against the grown
model's own gradients), and refusals of what an operator cannot do."""
from __future__ import annotations

import pytest
import torch

from flm_ext.config import FLMConfig
from flm_ext.growth import GrowthError, split_layer_name
from flm_ext.growth.methods import get_method, method_names, method_of
from flm_ext.model.flm_model import build_model_chunks
from flm_ext.model.global_weights import global_state_dict, load_global_state_dict

OLD = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=16,
                vocab_size=96, use_mup=True, mup_base_width=8, mup_output_mult=2.0, init_method_std=0.1)
WIDER = dict(hidden_size=64, num_attention_heads=8, ffn_hidden_size=128)


def _models(method, old_cfg, new_cfg, seed=3, old=None):
    plan = method.plan(old_cfg, new_cfg, seed=seed)
    if old is None:
        [old] = build_model_chunks(old_cfg)
    [new] = build_model_chunks(new_cfg)
    load_global_state_dict([new], method.grow_state_dict(global_state_dict([old]), plan))
    return plan, old.double(), new.double()


def _batch(cfg):
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length + 1), generator=torch.Generator().manual_seed(7))
    return ids[:, :-1], torch.arange(cfg.seq_length).expand(2, -1), ids[:, 1:]


def _logits(model, cfg):
    tokens, positions, _ = _batch(cfg)
    with torch.no_grad():
        return model.eval()(tokens, positions, None)


def test_registry_lists_the_operators_and_reads_a_checkpoints_record():
    assert set(method_names()) >= {"msg", "stack", "clone", "random"}
    from flm_ext.checkpoint import CheckpointRecord

    def record(**fields):
        return CheckpointRecord(iteration=0, model_config=FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=2,
                                                                    seq_length=16, vocab_size=128), **fields)

    assert method_of(record()) is None
    assert method_of(record(grown_from={"path": "x"})).name == "msg"  # older records: MSG
    clone = method_of(record(grown_from=get_method("clone", clone_noise=0.5).record()))
    assert clone.name == "clone" and clone.settings["clone_noise"] == 0.5


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("factor", [2, 3])
def test_clone_keeps_the_logits_exactly_in_float64(megatron_single_process, tied, factor):
    old_cfg = OLD.replace(share_embeddings_and_output_weights=tied)
    new_cfg = old_cfg.replace(hidden_size=32 * factor, num_attention_heads=4 * factor, ffn_hidden_size=64 * factor)
    _, old, new = _models(get_method("clone"), old_cfg, new_cfg)
    ref = _logits(old, old_cfg)
    assert ref.abs().max() > 0.1
    # Factor 2 is exact (halving is); factor 3 stores W/3 in fp32 (the models' parameter dtype).
    assert (_logits(new, old_cfg) - ref).abs().max() <= (1e-12 if factor == 2 else 1e-6)


def test_clone_noise_breaks_the_symmetry_but_not_the_function(megatron_single_process):
    new_cfg = OLD.replace(**WIDER)
    _, old, plain = _models(get_method("clone"), OLD, new_cfg)
    _, _, noisy = _models(get_method("clone", clone_noise=0.05), OLD, new_cfg, old=old.float())
    fc1 = lambda m: m.decoder.layers[0].mlp.linear_fc1.weight.detach()  # noqa: E731
    assert torch.equal(fc1(plain)[:, :32], fc1(plain)[:, 32:])  # without noise the copies are equal
    assert (fc1(noisy)[:, :32] - fc1(noisy)[:, 32:]).abs().max() > 0.05
    assert (_logits(noisy, OLD) - _logits(old.double(), OLD)).abs().max() <= 1e-6  # fp32 storage of the noisy blocks


@pytest.mark.parametrize("name, sizes", [("stack", dict(num_layers=4)), ("random", dict(num_layers=3, **WIDER))])
def test_methods_without_masks_move_the_logits(megatron_single_process, name, sizes):
    _, old, new = _models(get_method(name), OLD, OLD.replace(**sizes))
    assert (_logits(new, OLD) - _logits(old, OLD)).abs().max() > 1e-2


def test_stack_copies_blocks_of_layers_with_their_moments(megatron_single_process):
    for placement, sources in (("top", [0, 1, 0, 1]), ("interleave", [0, 0, 1, 1])):
        method = get_method("stack", stack_factor=2, depth_placement=placement)
        plan = method.plan(OLD, OLD.replace(**method.new_sizes(OLD, {})))
        stacked = torch.randn(2, 64, 32)
        for role in ("param", "exp_avg", "exp_avg_sq"):
            grown = method.grow_tensor("decoder.layers.mlp.linear_fc1.weight", stacked, plan, role)
            assert torch.equal(grown, stacked[sources]), (placement, role)


def _grads(model, cfg) -> dict:
    tokens, positions, labels = _batch(cfg)
    model.train().zero_grad()
    model(tokens, positions, None, labels=labels).mean().backward()
    return {split_layer_name(n): p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [True, False])
def test_clone_moments_follow_the_grown_models_gradients(megatron_single_process, tied):
    """The stated optimizer rule is what the gradients do: the grown model's gradient of every
    tensor equals the old gradient grown as `exp_avg` (and its square as `exp_avg_sq`)."""
    old_cfg = OLD.replace(share_embeddings_and_output_weights=tied)
    method = get_method("clone")
    plan, old, new = _models(method, old_cfg, old_cfg.replace(**WIDER))
    before, after = _grads(old, old_cfg), _grads(new, old_cfg)
    assert set(before) == set(after)
    for (key, layer), grad in before.items():
        expected = method.grow_width(key, grad, plan, "exp_avg", layer)
        got = after[key, layer]
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12 * grad.abs().max()), key
        squared = method.grow_width(key, grad * grad, plan, "exp_avg_sq", layer)
        assert torch.allclose(got * got, squared, rtol=1e-8, atol=1e-20), key


@pytest.mark.parametrize("name, options, sizes, message", [
    ("clone", {}, dict(hidden_size=48, num_attention_heads=6, ffn_hidden_size=96),
     "clone multiplies each width by an integer: hidden_size 32 -> 48"),
    ("clone", {}, dict(num_layers=4, **WIDER), "clone grows width only: num_layers 2 -> 4"),
    ("stack", {}, dict(num_layers=4, **WIDER), "stack grows depth only: hidden_size 32 -> 64"),
    ("stack", {}, {}, "stack needs more layers: give --num-layers or --stack-factor"),
    ("stack", dict(stack_factor=2), dict(num_layers=3), "--num-layers=3 disagrees with --stack-factor=2"),
])
def test_operators_refuse_what_they_cannot_do(name, options, sizes, message):
    method = get_method(name, **options)
    with pytest.raises(GrowthError, match=message):
        method.plan(OLD, OLD.replace(**method.new_sizes(OLD, sizes)))


@pytest.mark.parametrize("name, options, message", [
    ("grow", {}, "--method 'grow' is not a growth method; known: msg, stack, clone, random"),
    ("stack", dict(stack_factor=1), "--stack-factor=1 must be >= 2"),
    ("stack", dict(stack_factor=0), "--stack-factor=0 must be a positive integer"),
    ("clone", dict(clone_noise=-0.1), "--clone-noise=-0.1 must be a finite number >= 0"),
    ("clone", dict(clone_noise=float("nan")), "--clone-noise=nan must be a finite number >= 0"),
    ("clone", dict(depth_placement="top"), "--depth-placement applies to --method msg/stack/random, not --method clone"),
    ("msg", dict(clone_noise=0.1), "--clone-noise applies to --method clone, not --method msg"),
    ("random", dict(depth_init="stack"), "--depth-init applies to --method msg, not --method random"),
    ("stack", dict(depth_placement="middle"), "--depth-placement='middle' must be one of"),
])
def test_bad_knobs_are_refused_naming_the_flag(name, options, message):
    with pytest.raises(GrowthError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_method(name, **options)
