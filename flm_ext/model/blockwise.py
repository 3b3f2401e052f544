"""Blockwise causal attention (BCA): the xPos paper's inference-time window for long inputs.

Sun et al., "A Length-Extrapolatable Transformer" (arXiv 2212.10554), section 3.3: with a
training length l, the sequence is cut into blocks of l/2 tokens and each query attends causally
within its own block and to the whole previous block. No query then sees a key more than l - 1
positions back, so every relative distance the attention meets was seen in training, while
information still flows further through the layers (and, under a KV cache, through the reused
keys of the previous block). The model is trained with ordinary causal attention; BCA is only an
inference option. `block` below is the block length (l/2 by default, `default_block`).

Two implementations, one rule (query i may see key j iff j <= i and j // block >= i // block - 1):
`blockwise_mask` is the rule as a boolean matrix (the reference, and what the transformers export
uses in its mask), `blockwise_sdpa` computes attention one query block at a time against its two
key blocks, so memory grows with s x 2 block, not s^2 (what the training model uses).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def default_block(training_length: int) -> int:
    """The paper's block: half the training length (at least 1)."""
    return max(1, training_length // 2)


def blockwise_mask(query_positions: torch.Tensor, key_positions: torch.Tensor, block: int) -> torch.Tensor:
    """Boolean [len(query_positions), len(key_positions)]: True where the query may attend the key."""
    q = query_positions[:, None]
    k = key_positions[None, :]
    return (k <= q) & (torch.div(k, block, rounding_mode="floor") >= torch.div(q, block, rounding_mode="floor") - 1)


def needs_mask(length: int, block: int) -> bool:
    """Whether BCA differs from plain causal attention on `length` positions from 0: only from the
    third block on does a query lose sight of any earlier key."""
    return length > 2 * block


def blockwise_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, *, scale: float,
                   dropout_p: float = 0.0, enable_gqa: bool = False) -> torch.Tensor:
    """Attention of q, k, v ([b, heads, s, d], positions 0 .. s-1) under BCA, block by block."""
    s = q.shape[2]
    if not needs_mask(s, block):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, dropout_p=dropout_p,
                                              enable_gqa=enable_gqa)
    outputs = []
    for start in range(0, s, block):
        stop = min(start + block, s)
        key_start = max(0, start - block)
        rows = torch.arange(start, stop, device=q.device)
        cols = torch.arange(key_start, stop, device=q.device)
        allowed = cols[None, :] <= rows[:, None]  # within these two blocks the rule is plain causality
        outputs.append(F.scaled_dot_product_attention(q[:, :, start:stop], k[:, :, key_start:stop],
                                                      v[:, :, key_start:stop], attn_mask=allowed, scale=scale,
                                                      dropout_p=dropout_p, enable_gqa=enable_gqa))
    return torch.cat(outputs, dim=2)


def set_blockwise_attention(model: torch.nn.Module, block: int | None) -> int:
    """Switch BCA on (block length `block`) or off (None) in every FLM core attention of a model
    (the training model's modules carry the switch); returns how many modules were switched."""
    if block is not None and block < 1:
        raise ValueError(f"blockwise attention block {block} must be >= 1")
    switched = 0
    for module in model.modules():
        if hasattr(module, "blockwise_block"):
            module.blockwise_block = block
            switched += 1
    return switched
