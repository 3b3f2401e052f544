"""Worker bodies for the multi-process tests (importable by spawned processes)."""
from __future__ import annotations

import os

import torch

from flm_ext.config import FLMConfig, ParallelConfig
from flm_ext.model.flm_model import build_model_chunks
from flm_ext.model.global_weights import global_state_dict, load_global_state_dict
from flm_ext.runtime import initialize_distributed

# Small but complete: µP on (m = 4) so the output multiplier and 1/head_dim scale are exercised.
CFG = FLMConfig(num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256, seq_length=32,
                vocab_size=256, use_mup=True, mup_base_width=16, mup_output_mult=2.0, init_method_std=0.05)
LAYOUTS = {
    "tp2": ParallelConfig(tensor_model_parallel_size=2),
    "tp2_sp": ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True),
    "pp2": ParallelConfig(pipeline_model_parallel_size=2),
    "pp2_vpp2": ParallelConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2),
}


def tokens(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG.vocab_size, (batch, CFG.seq_length), generator=gen)


def _reset():
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()


def _forward_logits(chunks, batch: torch.Tensor, num_microbatches: int) -> torch.Tensor | None:
    """Full-vocab logits on the last pipeline stage (None elsewhere) via megatron's schedules."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    micro = list(batch.chunk(num_microbatches))
    position_ids = torch.arange(CFG.seq_length).unsqueeze(0)

    def step(data_iterator, model):
        ids = next(data_iterator)
        return model(ids, position_ids.expand_as(ids), None), None

    iterators = [iter(micro) for _ in chunks]
    outputs = get_forward_backward_func()(
        forward_step_func=step, data_iterator=iterators if len(chunks) > 1 else iterators[0], model=chunks,
        num_microbatches=num_microbatches, seq_length=CFG.seq_length, micro_batch_size=micro[0].shape[0],
        forward_only=True)
    if not parallel_state.is_pipeline_last_stage():
        return None
    return torch.cat([gather_from_tensor_model_parallel_region(o) for o in outputs], dim=0)


def forward_parity(rank, world_size, out_dir):
    """TP=1 logits, then the same weights at each layout in LAYOUTS; rank 0 saves max abs diffs."""
    initialize_distributed(ParallelConfig(world_size=world_size), seed=11)
    batch = tokens(2)
    with torch.no_grad():
        reference = build_model_chunks(CFG)
        state = global_state_dict(reference)
        ref_logits = _forward_logits(reference, batch, num_microbatches=2)
    _reset()
    diffs = {}
    runs = [(name, layout, True) for name, layout in LAYOUTS.items()]
    # Without loading anything: the same seed must build the same weights at any layout.
    runs += [("fresh_" + name, LAYOUTS[name], False) for name in ("tp2", "pp2")]
    for name, layout, load in runs:
        # Loaded runs start from a different seed, so the load has to do the work.
        initialize_distributed(layout, seed=100 + len(diffs) if load else 11)
        chunks = build_model_chunks(CFG, layout)
        if load:
            assert load_global_state_dict(chunks, state) > 0
        with torch.no_grad():
            logits = _forward_logits(chunks, batch, num_microbatches=2)
        diff = torch.tensor(-1.0 if logits is None else (logits - ref_logits).abs().max().item())
        torch.distributed.all_reduce(diff, op=torch.distributed.ReduceOp.MAX)
        diffs[name] = diff.item()
        _reset()
    if rank == 0:
        torch.save({"diffs": diffs, "ref_abs_max": ref_logits.abs().max().item()},
                   os.path.join(out_dir, "forward_parity.pt"))


TRAIN_LAYOUTS = {
    "tp2": ParallelConfig(tensor_model_parallel_size=2),
    "pp2": ParallelConfig(pipeline_model_parallel_size=2),
    "dp2": ParallelConfig(world_size=2),
    "dp2_distopt": ParallelConfig(world_size=2),
}
TRAIN_STEPS = 4
GLOBAL_BATCH = 4


def _batches(dp_rank: int, dp_size: int, micro_batch_size: int):
    """The same global batch every step (so the loss must fall), split over DP ranks."""
    ids = tokens(GLOBAL_BATCH + 0, seed=5)
    full = torch.cat([ids, ids[:, :1]], dim=1)  # next-token labels
    mask = torch.ones(GLOBAL_BATCH, CFG.seq_length)
    mask[0, : CFG.seq_length // 2] = 0.0  # uneven masks: per-token averaging must still agree
    mine = slice(dp_rank * GLOBAL_BATCH // dp_size, (dp_rank + 1) * GLOBAL_BATCH // dp_size)
    items = {"tokens": full[mine, :-1], "labels": full[mine, 1:], "loss_mask": mask[mine],
             "position_ids": torch.arange(CFG.seq_length).expand(GLOBAL_BATCH, -1)[mine]}
    count = items["tokens"].shape[0] // micro_batch_size
    return [{k: v[i * micro_batch_size:(i + 1) * micro_batch_size] for k, v in items.items()} for i in range(count)]


def train_parity(rank, world_size, out_dir):
    """A few AdamW steps from the same weights at TP=2, PP=2, DP=2 (+ distributed optimizer)."""
    from megatron.core import parallel_state

    from flm_ext.training.engine import build_optimizer, train_step, wrap_ddp
    from flm_ext.training.optim import OptimConfig

    initialize_distributed(ParallelConfig(world_size=world_size), seed=11)
    with torch.no_grad():
        state = global_state_dict(build_model_chunks(CFG))
    _reset()
    results = {}
    for name, layout in TRAIN_LAYOUTS.items():
        initialize_distributed(layout, seed=3)
        distopt = name.endswith("distopt")
        chunks = build_model_chunks(CFG, layout)
        load_global_state_dict(chunks, state)
        model = wrap_ddp(chunks, use_distributed_optimizer=distopt)
        optimizer = build_optimizer(model, CFG, OptimConfig(lr=1e-2, use_distributed_optimizer=distopt))
        dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
        micro = 1
        losses = []
        for _ in range(TRAIN_STEPS):
            batches = _batches(dp_rank, dp_size, micro)
            result = train_step(model, optimizer, iter(batches), num_microbatches=len(batches),
                                seq_length=CFG.seq_length, micro_batch_size=micro)
            assert result.update_successful
            losses.append(result.loss)
        # DP replicas must hold identical weights after the steps.
        checksum = torch.tensor([sum(p.double().sum().item() for p in chunks[0].parameters())])
        gathered = [torch.zeros_like(checksum) for _ in range(dp_size)]
        torch.distributed.all_gather(gathered, checksum, group=parallel_state.get_data_parallel_group())
        results[name] = {"losses": losses, "replica_spread": (max(gathered) - min(gathered)).item()}
        _reset()
    if rank == 0:
        torch.save(results, os.path.join(out_dir, "train_parity.pt"))
