"""Worker body for the multi-process growth test (importable by spawned processes)."""
from __future__ import annotations

import os

import torch

from flm_ext.config import FLMConfig, ParallelConfig
from flm_ext.growth import GrowthPlan, GrowthState, attach_growth, grow_state_dict, set_growth_lambda
from flm_ext.model.flm_model import build_model_chunks
from flm_ext.model.global_weights import global_state_dict, load_global_state_dict
from flm_ext.runtime import initialize_distributed

# µP on (m = 4 -> 6): width (hidden, heads, FFN) and depth (2 -> 4 layers, interleaved copies) at once.
OLD = FLMConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, seq_length=32,
                vocab_size=128, use_mup=True, mup_base_width=16, mup_output_mult=2.0, init_method_std=0.08)
NEW = OLD.replace(num_layers=4, hidden_size=96, num_attention_heads=6, ffn_hidden_size=192)
PLAN = GrowthPlan(OLD, NEW, depth_init="stack", depth_placement="interleave", seed=5)
LAYOUTS = {
    "tp2": ParallelConfig(tensor_model_parallel_size=2),
    "tp2_sp": ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True),
    "pp2": ParallelConfig(pipeline_model_parallel_size=2),
    "pp2_vpp2": ParallelConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
}
MID_LAMBDA = 0.4


def _reset():
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()


def _logits(chunks, batch: torch.Tensor, seq_length: int) -> torch.Tensor | None:
    """Full-vocab logits on the last pipeline stage (None elsewhere), through megatron's schedules."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    micro = list(batch.chunk(2))
    position_ids = torch.arange(seq_length).unsqueeze(0)

    def step(data_iterator, model):
        ids = next(data_iterator)
        return model(ids, position_ids.expand_as(ids), None), None

    iterators = [iter(micro) for _ in chunks]  # interleaved PP: one per model chunk
    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iterators if len(chunks) > 1 else iterators[0], model=chunks, num_microbatches=len(micro),
            seq_length=seq_length, micro_batch_size=micro[0].shape[0], forward_only=True)
    if not parallel_state.is_pipeline_last_stage():
        return None
    return torch.cat([gather_from_tensor_model_parallel_region(o) for o in outputs], dim=0)


def _max_diff(logits, reference) -> float:
    diff = torch.tensor(-1.0 if logits is None else (logits - reference).abs().max().item())
    torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
    return diff.item()


def grown_parity(rank, world_size, out_dir):
    """Grow on global tensors (every rank alike), load at each layout with masks at 0 and at MID_LAMBDA."""
    initialize_distributed(ParallelConfig(world_size=world_size), seed=21)
    batch = torch.randint(0, OLD.vocab_size, (4, OLD.seq_length), generator=torch.Generator().manual_seed(2))
    state = GrowthState.from_plan(PLAN, ramp_steps=10)
    original = build_model_chunks(OLD)
    ref = _logits(original, batch, OLD.seq_length)
    grown_state = grow_state_dict(global_state_dict(original), PLAN)
    grown = build_model_chunks(NEW)
    load_global_state_dict(grown, grown_state)
    attach_growth(grown, state, lam=MID_LAMBDA)
    ref_mid = _logits(grown, batch, OLD.seq_length)
    _reset()
    diffs = {}
    for index, (name, layout) in enumerate(LAYOUTS.items()):
        initialize_distributed(layout, seed=100 + index)  # a different init: the load must matter
        chunks = build_model_chunks(NEW, layout)
        load_global_state_dict(chunks, grown_state)
        attach_growth(chunks, state)
        diffs[name] = _max_diff(_logits(chunks, batch, OLD.seq_length), ref)
        set_growth_lambda(chunks, MID_LAMBDA)  # a wrongly sliced mask would pass at 0 only by luck
        diffs[name + "@mid"] = _max_diff(_logits(chunks, batch, OLD.seq_length), ref_mid)
        _reset()
    if rank == 0:
        torch.save({"diffs": diffs, "ref_abs_max": ref.abs().max().item(),
                    "mid_vs_ref": (ref_mid - ref).abs().max().item()}, os.path.join(out_dir, "grown_parity.pt"))


# Every operator of flm_ext/growth/methods besides MSG (whose masks grown_parity covers), with the
# TP=1 reference it must match at TP=2 and PP=2: the old model where the operator claims to keep
# the function (clone), else the same grown weights at TP=1.
METHOD_GROWTHS = {
    "clone": ({}, OLD.replace(hidden_size=128, num_attention_heads=8, ffn_hidden_size=256)),
    "clone_noise": ({"clone_noise": 0.02}, OLD.replace(hidden_size=128, num_attention_heads=8, ffn_hidden_size=256)),
    "stack": ({"stack_factor": 2, "depth_placement": "interleave"}, OLD.replace(num_layers=4)),
    "random": ({}, NEW),
}
METHOD_LAYOUTS = ("tp2", "pp2")


def method_parity(rank, world_size, out_dir):
    from flm_ext.growth.methods import get_method

    initialize_distributed(ParallelConfig(world_size=world_size), seed=21)
    batch = torch.randint(0, OLD.vocab_size, (4, OLD.seq_length), generator=torch.Generator().manual_seed(2))
    original = build_model_chunks(OLD)
    ref = _logits(original, batch, OLD.seq_length)
    old_state = global_state_dict(original)
    grown, refs = {}, {}
    for name, (options, new_cfg) in METHOD_GROWTHS.items():
        method = get_method(name.split("_")[0], **options)
        grown[name] = method.grow_state_dict(old_state, method.plan(OLD, new_cfg, seed=5))
        chunks = build_model_chunks(new_cfg)
        load_global_state_dict(chunks, grown[name])
        refs[name] = _logits(chunks, batch, OLD.seq_length)
    _reset()
    diffs, vs_old = {}, {name: (logits - ref).abs().max().item() for name, logits in refs.items()}
    for index, layout_name in enumerate(METHOD_LAYOUTS):
        initialize_distributed(LAYOUTS[layout_name], seed=200 + index)
        for name, (options, new_cfg) in METHOD_GROWTHS.items():
            chunks = build_model_chunks(new_cfg, LAYOUTS[layout_name])
            load_global_state_dict(chunks, grown[name])
            logits = _logits(chunks, batch, OLD.seq_length)
            diffs[f"{name}@{layout_name}"] = _max_diff(logits, ref if name.startswith("clone") else refs[name])
        _reset()
    if rank == 0:
        torch.save({"diffs": diffs, "vs_old": vs_old, "ref_abs_max": ref.abs().max().item()},
                   os.path.join(out_dir, "method_parity.pt"))
