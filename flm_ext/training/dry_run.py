"""`--dry-run`: check a launch for a given world size without any GPU, and estimate memory per GPU.

The estimate (bytes per GPU on the busiest pipeline stage):
- weights: the stage's parameters / TP, in bf16 (2 B) or fp32 (4 B); the first stage holds the
  embedding, and the last one a copy of it when PP > 1 (tied weights);
- gradients: fp32 accumulation buffers (4 B per local parameter);
- optimizer: fp32 main weights (bf16 only) + Adam's two moments, divided by DP with the
  distributed optimizer;
- activations: Korthikanti et al. (2022) per layer and micro-batch, with flash attention (no
  s^2 scores): s*b*h*34/TP bytes with sequence parallelism, s*b*h*(10 + 24/TP) without,
  2*s*b*h/TP with full recompute; times the layers of a stage and the micro-batches 1F1B keeps
  in flight on the first stage (PP); plus the fp32 logits of one micro-batch on the last stage.
"""
from __future__ import annotations

from dataclasses import dataclass

from flm_ext.config import describe, num_parameters
from flm_ext.training.arguments import TrainConfig

GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def estimate_memory(cfg: TrainConfig) -> MemoryEstimate:
    m, p, s = cfg.model, cfg.parallel, cfg.schedule
    tp, pp, dp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size, p.data_parallel_size
    h, seq, b = m.hidden_size, m.seq_length, s.micro_batch_size
    embedding = m.vocab_size * h
    per_layer = (num_parameters(m.replace(num_layers=1)) - num_parameters(m.replace(num_layers=0)))
    layers = m.num_layers // pp
    first = layers * per_layer + embedding
    last = layers * per_layer + 2 * h + (embedding if pp > 1 or not m.share_embeddings_and_output_weights else 0)
    local = max(first, last) / tp
    weight_bytes = 2 if cfg.bf16 else 4
    optimizer_bytes = (4 if cfg.bf16 else 0) + 8
    sharding = dp if cfg.optim.use_distributed_optimizer else 1
    if cfg.recompute_granularity == "full":
        per_layer_act = 2 * seq * b * h / tp
    elif p.sequence_parallel:
        per_layer_act = 34 * seq * b * h / tp
    else:
        per_layer_act = seq * b * h * (10 + 24 / tp)
    in_flight = min(pp, s.num_microbatches(dp))
    logits = 4 * seq * b * m.vocab_size / tp
    return MemoryEstimate(weights=local * weight_bytes, gradients=local * 4, optimizer=local * optimizer_bytes / sharding,
                          activations=layers * in_flight * per_layer_act + logits)


def report(cfg: TrainConfig, gpu_memory_gib: float = 80.0) -> str:
    """The dry-run summary: layout, size, tokens per step and the memory estimate."""
    m, p, s = cfg.model, cfg.parallel, cfg.schedule
    dp = p.data_parallel_size
    mem = estimate_memory(cfg)
    n = num_parameters(m)
    lines = [
        f"model        {describe(m)}",
        f"parameters   {n / 1e9:.1f}B ({n:,})",
        f"world size   {p.world_size} = TP {p.tensor_model_parallel_size} x PP {p.pipeline_model_parallel_size}"
        f" x DP {dp}" + (f" (virtual PP {p.virtual_pipeline_model_parallel_size})"
                         if p.virtual_pipeline_model_parallel_size else ""),
        f"layers/stage {m.num_layers // p.pipeline_model_parallel_size}; heads/TP rank "
        f"{m.num_attention_heads // p.tensor_model_parallel_size}; sequence parallel {p.sequence_parallel}; "
        f"distributed optimizer {cfg.optim.use_distributed_optimizer}; {'bf16' if cfg.bf16 else 'fp32'}",
        f"batch        global {s.global_batch_size} x seq {m.seq_length} = {s.global_batch_size * m.seq_length:,} "
        f"tokens/step; micro-batch {s.micro_batch_size}, {s.num_microbatches(dp)} micro-batches per DP rank",
        f"schedule     {s.train_iters:,} steps = {s.train_samples:,} samples = "
        f"{s.train_samples * m.seq_length / 1e9:.2f}B tokens; LR {cfg.optim.lr:g} -> {cfg.optim.min_lr:g} "
        f"({s.lr_decay_style}), warm-up {s.lr_warmup_samples:,} samples",
        f"memory/GPU   ~{mem.total / GIB:.1f} GiB: weights {mem.weights / GIB:.1f}, gradients "
        f"{mem.gradients / GIB:.1f}, optimizer {mem.optimizer / GIB:.1f}, activations {mem.activations / GIB:.1f}",
    ]
    if mem.total > gpu_memory_gib * GIB:
        lines.append(f"WARNING      the estimate exceeds {gpu_memory_gib:.0f} GiB per GPU: lower --micro-batch-size, "
                     f"add --recompute-granularity full, or raise TP/PP")
    return "\n".join(lines)
