"""Attention over xPos keys decayed relative to their own block (long positions, see model/xpos.py).

With `XPosEmbedding(block=W)` a query at n (block i) and a key at m (block j) carry the factors
zeta^((n - r_i)/sb) and zeta^(-(m - r_j)/sb), r_b = c + b*W, both bounded at any position. The
score the xPos formula asks for is zeta^((n - m)/sb) = those two times zeta^((i - j) W / sb), a
per-frequency constant of the block distance (`XPosEmbedding.block_decay`). It goes on the query:
for each key block j the query is multiplied by its own constant, then dotted with that block's
keys. Keys are never rescaled, so a KV cache stores them once; a one-token decode step costs one
[blocks, d] product more than plain attention.

Scores are computed in the inputs' dtype on GPU (as SDPA's kernels do; fp32 on CPU, where torch's
half-precision matmuls are slow), softmax in fp32 (or float64); queries go in
chunks so memory stays O(chunk x keys). Plain torch: runs on CPU and GPU, differentiable.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

# Scores held at once per chunk (elements): bounds memory at long lengths.
_CHUNK_ELEMENTS = 1 << 25


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, start: int, block: int,
                    decay: torch.Tensor, scale: float,
                    allowed: Union[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], None] = None,
                    dropout_p: float = 0.0) -> torch.Tensor:
    """Causal attention of queries at positions start .. start+s-1 over keys at 0 .. L-1.

    q: [b, h, s, d] and k, v: [b, g, L, d] (g divides h: grouped queries) with block-referenced
    xPos already applied; decay: [>= number of key blocks, d] from `XPosEmbedding.block_decay`;
    allowed: optional boolean mask broadcastable to [b, h, s, L] (True = may attend), or a function
    (query positions, key positions) -> such a [c, l] mask for a chunk (e.g. blockwise causal
    attention's rule, without an s x L mask in memory); combined with causality. Returns [b, h, s, d].
    """
    b, h, s, d = q.shape
    length, out_dtype = k.shape[2], v.dtype
    if q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    if k.shape[1] != h:  # grouped-query attention: head t uses group t // (h / g)
        k = k.repeat_interleave(h // k.shape[1], dim=1)
        v = v.repeat_interleave(h // v.shape[1], dim=1)
    blocks = -(-length // block)
    keys = F.pad(k, (0, 0, 0, blocks * block - length)).view(b, h, blocks, block, d)
    key_pos = torch.arange(length, device=q.device)
    key_block = torch.arange(blocks, device=q.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, b * h * blocks * block))
    out = []
    for c0 in range(0, s, chunk):
        q_pos = torch.arange(start + c0, start + min(s, c0 + chunk), device=q.device)
        seen = min(blocks, int(q_pos[-1]) // block + 1)  # key blocks this chunk may see (causal)
        seen_len = min(length, seen * block)
        distance = torch.div(q_pos, block, rounding_mode="floor")[:, None] - key_block[None, :seen]  # [c, seen]
        factor = decay[distance.clamp(min=0)] * scale * (distance >= 0)[..., None]  # future blocks: 0
        qx = q[:, :, c0:c0 + len(q_pos), None, :] * factor.to(q.dtype)  # [b, h, c, seen, d]
        scores = torch.einsum("bhcjd,bhjwd->bhcjw", qx, keys[:, :, :seen]).reshape(b, h, len(q_pos), seen * block)
        scores = scores[..., :seen_len].to(torch.promote_types(scores.dtype, torch.float32))
        mask = key_pos[None, :seen_len] <= q_pos[:, None]
        if callable(allowed):
            mask = mask & allowed(q_pos, key_pos[:seen_len])
        elif allowed is not None:
            rows = allowed if allowed.shape[-2] == 1 else allowed[..., c0:c0 + len(q_pos), :]
            mask = mask & rows[..., :seen_len]
        probs = scores.masked_fill_(~mask, float("-inf")).softmax(-1)
        if dropout_p > 0.0:
            probs = F.dropout(probs, p=dropout_p)
        out.append(probs.to(v.dtype) @ v[:, :, :seen_len])
    return torch.cat(out, dim=2).to(out_dtype)
