"""Whole (global) tensors <-> this rank's shards, using megatron-core's own sharding metadata.

Every parameter's `ShardedTensor` (from `sharded_state_dict()`, the same metadata torch_dist
checkpoints use) knows its global key, global shape and where this rank's slice sits, across
TP splits and PP layer offsets (layers are stacked on a leading axis in the global view). So
weights can be moved between parallel layouts without knowing any per-layer split rule: parity
tests load a TP=1 model's weights into TP=2 / PP=2 models, and growth works on global tensors.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.dist_checkpointing.utils import extract_sharded_tensors

from flm_ext.model.flm_model import unwrap


def iter_sharded_tensors(chunks: Iterable[torch.nn.Module]) -> Iterator[ShardedTensor]:
    """This rank's ShardedTensors (parameters only; extra state objects are skipped)."""
    for chunk in chunks:
        module = unwrap(chunk)
        sharded, _ = extract_sharded_tensors(module.sharded_state_dict())
        for value in sharded.values():
            if isinstance(value, ShardedTensor):
                yield value


def _local_view(sh: ShardedTensor) -> torch.Tensor:
    return sh.data if sh.flattened_range is None else sh.data.view(sh.local_shape)


@torch.no_grad()
def global_state_dict(chunks: Iterable[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Global tensors assembled from this rank's shards: complete only for an unsplit model (TP=PP=1)."""
    out: dict[str, torch.Tensor] = {}
    for sh in iter_sharded_tensors(chunks):
        if sh.key not in out:
            out[sh.key] = torch.zeros(sh.global_shape, dtype=sh.data.dtype)
        out[sh.key][sh.global_slice()] = _local_view(sh).detach().cpu()
    return out


@torch.no_grad()
def load_global_state_dict(chunks: Iterable[torch.nn.Module], state: dict[str, torch.Tensor]) -> int:
    """Copy this rank's slices out of global tensors into the model; returns how many were loaded.

    Raises KeyError / ValueError naming the key when a tensor is missing or its shape is wrong.
    """
    loaded = 0
    for sh in iter_sharded_tensors(chunks):
        if sh.key not in state:
            raise KeyError(f"global state has no tensor {sh.key!r}")
        full = state[sh.key]
        if tuple(full.shape) != tuple(sh.global_shape):
            raise ValueError(f"{sh.key}: global shape {tuple(full.shape)} != model's {tuple(sh.global_shape)}")
        _local_view(sh).copy_(full[sh.global_slice()])
        loaded += 1
    return loaded
