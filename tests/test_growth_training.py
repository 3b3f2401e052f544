"""Training continues across growth: megatron's DDP + AdamW, weights and Adam state grown, masks ramped.

The Adam state is grown by reaching into the torch AdamW that megatron falls back to on CPU, one
parameter at a time, with the same tensor-level functions a checkpoint tool uses.
"""
import pytest
import torch

from flm_ext.config import FLMConfig
from flm_ext.growth import (GrowthPlan, GrowthState, apply_growth_schedule, grow_layer, grow_state_dict,
                            grow_width, set_growth_lambda, split_layer_name)
from flm_ext.model.flm_model import build_model_chunks
from flm_ext.model.global_weights import global_state_dict, load_global_state_dict
from flm_ext.model.norm import FLMLayerNorm
from flm_ext.training.engine import build_optimizer, train_step, wrap_ddp
from flm_ext.training.optim import OptimConfig

OLD = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=32,
                vocab_size=128, use_mup=True, mup_base_width=8, mup_output_mult=2.0, init_method_std=0.05)
NEW = OLD.replace(num_layers=3, hidden_size=48, num_attention_heads=6, ffn_hidden_size=96)
PLAN = GrowthPlan(OLD, NEW, depth_init="stack", depth_placement="top", seed=3)
PRE_STEPS, RAMP = 3, 4
BATCH = 4


def _batch():
    ids = torch.randint(0, OLD.vocab_size, (BATCH, OLD.seq_length + 1), generator=torch.Generator().manual_seed(9))
    return {"tokens": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": torch.ones(BATCH, OLD.seq_length),
            "position_ids": torch.arange(OLD.seq_length).expand(BATCH, -1)}


def _setup(cfg, state=None):
    chunks = build_model_chunks(cfg)
    if state is not None:
        load_global_state_dict(chunks, state)
    model = wrap_ddp(chunks)
    optimizer = build_optimizer(model, cfg, OptimConfig(lr=1e-2))
    [inner] = getattr(optimizer, "chained_optimizers", [optimizer])
    adam = inner.optimizer
    for group in adam.param_groups:  # µP LR groups, as the trainer's scheduler would set them
        group["lr"] = group["max_lr"]
    return chunks, model, optimizer, adam


def _step(model, optimizer):
    result = train_step(model, optimizer, iter([_batch()]), num_microbatches=1, seq_length=OLD.seq_length,
                        micro_batch_size=BATCH)
    assert result.update_successful
    return result.loss


def _logits(chunk):
    batch = _batch()
    with torch.no_grad():
        return chunk(batch["tokens"], batch["position_ids"], None)


def _eval_loss(chunk):
    batch = _batch()
    with torch.no_grad():
        return chunk(batch["tokens"], batch["position_ids"], None, labels=batch["labels"]).mean().item()


def _grow_adam_state(old_chunk, old_adam, new_chunk, new_adam, plan):
    """Adam moments of every parameter grown with the checkpoint tool's functions; step kept."""
    old = {}
    for name, param in old_chunk.named_parameters():
        key, layer = split_layer_name(name)
        old[key, layer] = old_adam.state[param]
    steps = {float(state["step"]) for state in old.values()}
    assert steps == {PRE_STEPS}
    for name, param in new_chunk.named_parameters():
        key, layer = split_layer_name(name)
        state = {"step": torch.tensor(float(PRE_STEPS))}
        for role in ("exp_avg", "exp_avg_sq"):
            if layer is None:
                state[role] = grow_width(key, old[key, None][role], plan, role)
            else:
                state[role] = grow_layer(key, lambda i: old[key, i][role], plan, layer, role)
        new_adam.state[param] = state


def test_loss_continues_across_growth_and_falls_while_masks_ramp(megatron_single_process):
    old_chunks, old_model, old_opt, old_adam = _setup(OLD)
    pre = [_step(old_model, old_opt) for _ in range(PRE_STEPS)]
    assert pre[-1] < pre[0]
    last_loss = _eval_loss(old_chunks[0])  # the loss of the weights that are grown

    chunks, model, optimizer, adam = _setup(NEW, grow_state_dict(global_state_dict(old_chunks), PLAN))
    _grow_adam_state(old_chunks[0], old_adam, chunks[0], adam, PLAN)
    state = GrowthState.from_plan(PLAN, ramp_steps=RAMP, start_iteration=PRE_STEPS)
    fc1 = chunks[0].decoder.layers[0].mlp.linear_fc1.weight
    new_units = fc1[OLD.ffn_hidden_size:].detach().clone()

    post, lambdas = [], []
    for iteration in range(PRE_STEPS, PRE_STEPS + RAMP + 2):
        if iteration == PRE_STEPS + RAMP:  # the ramp ends here: masks at 1 vs dropped
            set_growth_lambda(chunks, 1.0)
            masked = _logits(chunks[0])
        lambdas.append(apply_growth_schedule(chunks, state, iteration))
        if iteration == PRE_STEPS + RAMP:
            assert (_logits(chunks[0]) - masked).abs().max().item() <= 1e-5
        post.append(_step(model, optimizer))

    assert lambdas == [0.0, 0.25, 0.5, 0.75, None, None]
    # The first loss after growth is the last model's loss on the same batch (before any update).
    assert post[0] == pytest.approx(last_loss, abs=1e-5)
    assert post[0] < pre[-1]  # ... which is lower than the last logged (pre-update) loss
    # Training goes on: the loss keeps falling while the new coordinates are switched on.
    assert all(b < a for a, b in zip(post, post[1:])), post
    assert not torch.equal(fc1[OLD.ffn_hidden_size:], new_units)  # the new FFN units trained
    # After the ramp the masks are gone.
    assert chunks[0]._flm_growth is None
    assert all(m.growth_mask is None for m in chunks[0].modules() if isinstance(m, FLMLayerNorm))
