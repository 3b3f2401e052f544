"""Synthetic checkpoints of any FLM shape, written tensor by tensor: big inputs in little memory
for benchmarks and tests of the offline tools (growth, export)."""
from __future__ import annotations

import os
import zlib

import torch

from flm_ext.checkpoint import (DEFAULT_BUCKET_BYTES, CheckpointRecord, Chunk, finish_iteration_folder, iteration_dir,
                                tensor_chunks, write_chunks, write_latest)
from flm_ext.checkpoint.writer import empty_extra_state, extra_state_chunks
from flm_ext.config import FLMConfig
from flm_ext.growth.operators import _TENSORS, GrowthPlan, is_layer_key


def write_synthetic_checkpoint(root: str, cfg: FLMConfig, *, iteration: int = 100, optimizer: bool = True,
                               dtype: torch.dtype = torch.float32, seed: int = 0,
                               bucket_bytes: int = DEFAULT_BUCKET_BYTES, record_fields: dict | None = None) -> None:
    """A checkpoint of `cfg` with random weights in the trainer's layout: weights in `dtype`, fp32
    Adam moments and, for a low-precision `dtype`, the fp32 main weights (`fp32_param`, equal to the
    weights up to rounding, as in bf16 training), and the linear layers' (empty) `_extra_state` objects, so
    megatron's loader reads its weights (growth --verify, evaluation, export). It lacks the optimizer
    hyper-parameters: input for the offline tools, not for `pretrain_flm.py`.
    `record_fields`: more fields of its `CheckpointRecord` (e.g. a tokenizer or growth record)."""
    record = CheckpointRecord(iteration=iteration, model_config=cfg, parallel_layout=(1, 1))
    record = record.replace(**(record_fields or {}))
    folder = iteration_dir(root, iteration)
    record.to_dict(os.path.join(folder, "common.pt"))  # a bad record is refused before anything is written
    plan = GrowthPlan(cfg, cfg)
    keys = [k for k in _TENSORS if k != "output_layer.weight" or not cfg.share_embeddings_and_output_weights]
    states = (("exp_avg", "exp_avg_sq") + (("fp32_param",) if dtype != torch.float32 else ())) if optimizer else ()
    roles = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "fp32_param": "param"}
    chunks: list[Chunk] = []
    for model_key in keys:
        _, shape = plan.shapes(model_key)
        layers = cfg.num_layers if is_layer_key(model_key) else None
        chunks += tensor_chunks(model_key, model_key, "param", shape, dtype, layers)
        for name in states:
            chunks += tensor_chunks(f"optimizer.state.{name}.{model_key}", model_key, roles[name], shape,
                                    torch.float32, layers)

    chunks += extra_state_chunks(cfg.num_layers)

    def produce(c: Chunk):
        if c.dtype is None:
            return empty_extra_state()
        name = c.model_key if c.role == "param" else c.key  # a weight and its fp32 main copy share values
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}/{c.layer}".encode()))
        out = torch.randn(c.sizes, generator=g, dtype=torch.float32).mul_(0.02)
        return (out.abs_() if c.role == "exp_avg_sq" else out).to(c.dtype)

    os.makedirs(folder)
    write_chunks(folder, chunks, produce, bucket_bytes=bucket_bytes)
    finish_iteration_folder(folder, record)
    write_latest(root, iteration)
