"""xPos: rotary position embedding with a per-frequency exponential decay (docs/FLM.md section 1.1).

For head dim d and frequency pair i (theta_i = base^(-2i/d)), the query at position n is rotated by
n * theta_i and multiplied by zeta_i^((n - c) / scale_base); the key at m is rotated by m * theta_i
and multiplied by zeta_i^(-(m - c) / scale_base), with zeta_i = (2i/d + 0.4) / 1.4. In q.k the
factors combine to zeta_i^((n - m) / scale_base), so distant tokens are damped. The offset c
(half the training sequence length) cancels; it keeps the powers near 1 for bf16.

Long positions (`block`, the training length W): with one fixed c the key factor grows as
zeta_0^(-(m - c)/scale_base) (about 150 at 2k from c, 5e8 at 8k; fp16 overflows past ~4.5k,
bf16/fp32 past ~36k). So the reference moves: a position p in block j = p // W uses
r_j = c + j*W, and its factor is bounded by zeta_0^(-+W/2/scale_base) whatever p is. Inside one
block this is exactly the old scheme (block 0 is bit-identical). Across blocks q.k needs
zeta^((n - r_j)/scale_base) for a query in block i against a key in block j, which is the query's
own factor times `block_decay` zeta^((i - j) W / scale_base) <= 1: a per-pair constant applied to
the query (see `flm_ext/model/xpos_blocks.py`), so keys are decayed once, with their own block's
reference, and a KV cache never rescales them.

Pairs use the rotate-half layout of Megatron/GPT-NeoX: pair i is (x[i], x[i + d/2]).
Rotation and decay are folded into one (cos, sin) table per side, so applying xPos costs the
same single elementwise pass as plain RoPE.
"""
from __future__ import annotations

import torch


def xpos_decay(head_dim: int) -> torch.Tensor:
    """zeta_i = (2i/d + 0.4) / 1.4 for i = 0 .. d/2-1 (float64)."""
    i = torch.arange(0, head_dim // 2, dtype=torch.float64)
    return (2 * i / head_dim + 0.4) / 1.4


def reference_positions(positions: torch.Tensor, center: float, block: int | None) -> torch.Tensor:
    """The decay's reference for each position (float64): c, or c + W * (p // W) with blocks of W."""
    pos = positions.to(torch.float64)
    if block is None:
        return torch.full_like(pos, float(center))
    return center + block * torch.div(positions, block, rounding_mode="floor").to(torch.float64)


def block_decay(head_dim: int, block: int, scale_base: float, distances: torch.Tensor) -> torch.Tensor:
    """zeta_i^(delta * W / scale_base) for block distances delta >= 0: [len(distances), d] float64.

    What a query's folded table still lacks against keys `delta` blocks back (values in (0, 1];
    far blocks underflow towards 0 where the exact term is below any dtype's resolution anyway).
    """
    power = distances.to(torch.float64)[:, None] * (block / scale_base)
    half = xpos_decay(head_dim)[None, :] ** power
    return torch.cat([half, half], dim=-1)


def rotary_tables(positions: torch.Tensor, head_dim: int, *, base: float = 10000.0, scale_base: float | None = 512.0,
                  center: float = 0.0, block: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cos_q, sin_q, cos_k, sin_k), each [len(positions), d] in float64.

    `scale_base=None` gives plain RoPE (no decay). q' = q * cos_q + rotate_half(q) * sin_q, and the
    same for k with the key tables. With `block`, each position's decay is relative to its block's
    reference (`reference_positions`), not to `center`.
    """
    pos = positions.to(torch.float64)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(pos, inv_freq)  # [s, d/2]
    cos, sin = torch.cos(angles), torch.sin(angles)
    if scale_base is None:
        q_scale = k_scale = torch.ones_like(angles)
    else:
        power = ((pos - reference_positions(positions, center, block)) / scale_base)[:, None]
        q_scale = xpos_decay(head_dim)[None, :] ** power
        k_scale = 1.0 / q_scale
    def _full(t):
        return torch.cat([t, t], dim=-1)
    return _full(cos * q_scale), _full(sin * q_scale), _full(cos * k_scale), _full(sin * k_scale)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [s, b, heads, d]; cos/sin: [s, d] (already in x's dtype and device)."""
    cos = cos[:, None, None, :]
    sin = sin[:, None, None, :]
    return x * cos + rotate_half(x) * sin


class XPosEmbedding(torch.nn.Module):
    """Caches the folded tables per (length, device, dtype) and applies them to q and k.

    Positions are 0 .. s-1 plus `offset` (decoding with a cache passes the cache length).
    `block` (the training length; None: one fixed center) moves the decay's reference per block,
    so the tables stay bounded at any position; attention across blocks then needs
    `xpos_blocks.block_attention` (`needs_blocks` says when).
    """

    def __init__(self, head_dim: int, *, base: float, scale_base: float | None, center: float,
                 block: int | None = None):
        super().__init__()
        self.head_dim, self.base, self.scale_base, self.center = head_dim, base, scale_base, center
        self.block = block if scale_base is not None else None  # plain RoPE has nothing to bound
        self._cache: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def tables(self, length: int, offset: int, device: torch.device, dtype: torch.dtype):
        key = (length, offset, device, dtype)
        if key not in self._cache:
            positions = torch.arange(offset, offset + length)
            tabs = rotary_tables(positions, self.head_dim, base=self.base, scale_base=self.scale_base,
                                 center=self.center, block=self.block)
            self._cache = {key: tuple(t.to(device=device, dtype=dtype) for t in tabs)}
        return self._cache[key]

    def needs_blocks(self, total_length: int) -> bool:
        """Whether keys 0 .. total_length-1 span more than one block (SDPA alone is not enough)."""
        return self.block is not None and total_length > self.block

    def block_decay(self, num_blocks: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[num_blocks, d] cross-block factors for distances 0 .. num_blocks-1 (see `block_decay`)."""
        key = ("decay", num_blocks, device, dtype)
        cache = self.__dict__.setdefault("_decay_cache", {})
        if key not in cache:
            cache.clear()
            cache[key] = block_decay(self.head_dim, self.block, self.scale_base,
                                     torch.arange(num_blocks)).to(device=device, dtype=dtype)
        return cache[key]

    def forward(self, query: torch.Tensor, key: torch.Tensor, offset: int = 0):
        """query, key: [s, b, heads, d] -> rotated (and decayed) query, key."""
        cos_q, sin_q, cos_k, sin_k = self.tables(query.shape[0], offset, query.device, query.dtype)
        return apply_rotary(query, cos_q, sin_q), apply_rotary(key, cos_k, sin_k)
