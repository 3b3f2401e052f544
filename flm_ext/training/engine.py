"""The pieces of a training step on megatron-core, shared by the trainer, tools and tests.

`wrap_ddp` + `build_optimizer` give megatron's DistributedDataParallel (optionally with its
distributed optimizer) and AdamW with FLM's defaults and µP LR groups; `train_step` runs one
global batch through `get_forward_backward_func` (1F1B / interleaved schedules for PP).
Losses are per-token over the whole global batch (megatron's `calculate_per_token_loss`), so
the loss and gradients do not depend on how the batch is split over micro-batches or DP ranks,
and FreeLM teacher samples (loss on two label tokens only) weigh per token like everything else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer import get_standard_config_overrides
from megatron.core.pipeline_parallel import get_forward_backward_func

from flm_ext.config import FLMConfig
from flm_ext.model.mup import mup_optimizer_overrides
from flm_ext.training.optim import OptimConfig


def wrap_ddp(chunks: list[torch.nn.Module], use_distributed_optimizer: bool = False) -> list[DistributedDataParallel]:
    """Wrap model chunks in megatron's DDP and hook its grad sync into the schedules."""
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=use_distributed_optimizer)
    wrapped = [
        DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk,
                                disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]
    config = wrapped[0].config
    # Without this, DP replicas never all-reduce their gradients and silently diverge.
    config.finalize_model_grads_func = finalize_model_grads
    no_sync = [chunk.no_sync for chunk in wrapped]
    config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    return wrapped


def build_optimizer(chunks: list[DistributedDataParallel], model: FLMConfig, optim: OptimConfig):
    """megatron's optimizer (Adam with decoupled weight decay = AdamW), µP LR groups when µP is on."""
    config = chunks[0].config
    opt_config = OptimizerConfig(
        optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1, adam_beta2=optim.adam_beta2, adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad, bf16=config.bf16, fp16=config.fp16, params_dtype=config.params_dtype,
        use_distributed_optimizer=optim.use_distributed_optimizer,
    )
    overrides = get_standard_config_overrides(opt_config)  # no weight decay on biases and norms
    overrides.update(mup_optimizer_overrides(model, optim.lr, optim.min_lr))
    return get_megatron_optimizer(opt_config, chunks, config_overrides=overrides)


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Masked per-token loss: (sum, token count, report) as megatron's per-token-loss schedules expect."""
    mask = loss_mask.reshape(-1).float()
    total = torch.sum(output_tensor.reshape(-1).float() * mask)
    num_tokens = mask.sum().to(torch.int)
    return total, num_tokens, {"lm loss": torch.stack([total.detach().clone(), mask.sum().detach()])}


def forward_step(data_iterator: Iterator[dict], model: torch.nn.Module):
    """One micro-batch: dict with tokens, labels, loss_mask, position_ids ([b, s] each)."""
    batch = next(data_iterator)
    device = next(model.parameters()).device
    tokens = batch["tokens"].to(device)
    position_ids = batch["position_ids"].to(device)
    labels = batch["labels"].to(device)
    output = model(tokens, position_ids, None, labels=labels)
    return output, partial(loss_func, batch["loss_mask"].to(device))


def reduce_loss(reports: list[dict]) -> float:
    """Per-token loss of the global batch, the same number on every rank."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for report in reports:  # non-empty on the last pipeline stage only
        total += report["lm loss"].to(total)
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    torch.distributed.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
    return (total[0] / total[1].clamp(min=1)).item()


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None
    update_successful: bool  # False: the step was skipped (non-finite loss or gradient norm)


def _clip_grads(optimizer, grad_norm: float) -> None:
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        params = opt.get_parameters()
        if params and opt.config.clip_grad > 0.0:
            clip_grad_by_total_norm_fp32(params, max_norm=opt.config.clip_grad, total_norm=grad_norm,
                                         use_decoupled_grad=getattr(
                                             opt.config, "use_precision_aware_optimizer_no_fp8_or_ds_fp8", False))


def optimizer_step(optimizer, loss: float) -> tuple[bool, float]:
    """megatron's optimizer.step(), split so a non-finite loss or gradient norm skips the update.

    (megatron skips only on fp16 loss-scale overflow; in bf16/fp32 a NaN would reach the weights.)
    """
    found_inf = optimizer.prepare_grads()
    grad_norm = float(optimizer.get_grad_norm())
    if found_inf or not math.isfinite(loss) or not math.isfinite(grad_norm):
        return False, grad_norm
    _clip_grads(optimizer, grad_norm)
    return bool(optimizer.step_with_ready_grads()), grad_norm


def train_step(chunks: list[DistributedDataParallel], optimizer, data_iterator, *, num_microbatches: int,
               seq_length: int, micro_batch_size: int, step_fn: Callable = forward_step) -> StepResult:
    """Forward and backward over `num_microbatches` micro-batches, then one optimizer step.

    With interleaved pipelining pass one iterator per model chunk.
    """
    for chunk in chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    if len(chunks) > 1 and not isinstance(data_iterator, list):
        raise ValueError("interleaved pipeline parallelism needs one data iterator per model chunk")
    reports = get_forward_backward_func()(
        forward_step_func=step_fn, data_iterator=data_iterator, model=chunks,
        num_microbatches=num_microbatches, seq_length=seq_length, micro_batch_size=micro_batch_size,
        forward_only=False,
    )
    loss = reduce_loss(reports)
    update_successful, grad_norm = optimizer_step(optimizer, loss)
    return StepResult(loss=loss, grad_norm=grad_norm, update_successful=update_successful)


@torch.no_grad()
def eval_step(chunks, data_iterator, *, num_microbatches: int, seq_length: int, micro_batch_size: int,
              step_fn: Callable = forward_step) -> float:
    """Per-token loss over `num_microbatches` micro-batches without gradients."""
    for chunk in chunks:
        chunk.eval()
    try:
        reports = get_forward_backward_func()(
            forward_step_func=step_fn, data_iterator=data_iterator, model=chunks,
            num_microbatches=num_microbatches, seq_length=seq_length, micro_batch_size=micro_batch_size,
            forward_only=True,
        )
    finally:
        for chunk in chunks:
            chunk.train()
    return reduce_loss(reports)
