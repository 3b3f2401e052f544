"""Fast paths for the FLM step on GPU, each behind a switch, each with the plain code as reference.

Why: on an H200 megatron's GPTModel with SDPA reached 45% MFU against 48% for a plain PyTorch
peer, and applying xPos as separate elementwise passes cost another 3.4%. What is here:

- `apply_xpos_qk`: rotary + xPos decay applied to q and k in ONE pass (one read and one write of
  each), writing them straight into the [b, heads, s, d] layout SDPA wants, so the permute copies
  disappear too. Implementations (`XPOS_IMPLS`):
  `reference` - `xpos.apply_rotary` on q and k, then a permute view (the code as it always was);
  `compiled`  - the same arithmetic as one torch.compile'd function (inductor fuses it);
  `triton`    - a hand-written Triton kernel with its own backward (the inverse rotation with the
                same tables), q and k in one launch; runs on CPU under `TRITON_INTERPRET=1` for tests.
  `auto` is `triton` on CUDA when triton imports, else `compiled` on CUDA, else `reference`, so CPU
  runs compute exactly what they did before. `FLM_XPOS_IMPL` overrides the choice.
- `sdpa_backends`: the order of SDPA kernels on CUDA (`FLM_SDPA_BACKENDS`, e.g. `cudnn,flash`);
  cuDNN's Hopper attention is faster than the FlashAttention-2 kernels torch ships.
- `gpu_fusion_overrides`: megatron's own fusions FLM can use (bias+GeLU, bias+dropout+add, and for
  bf16 models the fused cross-entropy). megatron's fused bias-GeLU is the tanh approximation, which is FLM's GeLU, so it
  is exact for FLM (tests/test_fast_paths.py checks forward and gradients against
  `gelu(approximate="tanh")`).
- `use_fused_adam`: megatron falls back to torch's AdamW without apex/TE; torch's own fused
  (single-kernel, multi-tensor) AdamW is numerically the same update and far fewer launches.

The fused xPos paths use fp32 half tables ([s, d/2]; the full tables are two copies) and compute
in fp32 before rounding once to the input dtype; the reference rounds the tables to the input
dtype first, so in bf16 the fused result is the more accurate of the two.
"""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache

import torch

from flm_ext.config import gpu_fusion_overrides  # noqa: F401 (re-exported: the GPU fast paths in one place)
from flm_ext.model.xpos import XPosEmbedding, apply_rotary

XPOS_IMPLS = ("auto", "reference", "compiled", "triton")


# --- Triton kernel (flm_ext/model/xpos_triton.py) --------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails at import
        return False
    return True


def _sbh_strides(t: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """(s, b, h) strides of a tensor stored as [s, b, h, d] ('sbhd') or [b, h, s, d] ('bhsd')."""
    if layout == "sbhd":
        return t.stride(0), t.stride(1), t.stride(2)
    return t.stride(2), t.stride(0), t.stride(1)


def _launch(q, k, qo, ko, tables, sign: int, in_layout: str, out_layout: str) -> None:
    from flm_ext.model import xpos_triton

    s, b, h = (q.shape[0], q.shape[1], q.shape[2]) if in_layout == "sbhd" else (q.shape[2], q.shape[0], q.shape[1])
    xpos_triton.launch(q, k, qo, ko, tables, sign, (_sbh_strides(q, in_layout), _sbh_strides(k, in_layout)),
                       (_sbh_strides(qo, out_layout), _sbh_strides(ko, out_layout)), s, b, h)


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _TritonXPosQK(torch.autograd.Function):
    """[s, b, h, d] q, k -> rotated, decayed [b, h, s, d] q, k (contiguous); backward in one launch too."""

    @staticmethod
    def forward(ctx, query, key, cos_q, sin_q, cos_k, sin_k):
        query, key = _last_dim_contiguous(query), _last_dim_contiguous(key)
        s, b, h, d = query.shape
        q_out = torch.empty(b, h, s, d, dtype=query.dtype, device=query.device)
        k_out = torch.empty(b, h, s, d, dtype=key.dtype, device=key.device)
        tables = (cos_q, sin_q, cos_k, sin_k)
        _launch(query, key, q_out, k_out, tables, 1, "sbhd", "bhsd")
        ctx.save_for_backward(*tables)
        return q_out, k_out

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        tables = ctx.saved_tensors
        grad_q, grad_k = _last_dim_contiguous(grad_q), _last_dim_contiguous(grad_k)
        b, h, s, d = grad_q.shape
        gq_in = torch.empty(s, b, h, d, dtype=grad_q.dtype, device=grad_q.device)
        gk_in = torch.empty(s, b, h, d, dtype=grad_k.dtype, device=grad_k.device)
        _launch(grad_q, grad_k, gq_in, gk_in, tables, -1, "bhsd", "sbhd")
        return gq_in, gk_in, None, None, None, None


# --- torch.compile'd elementwise version ----------------------------------------------------------
def _xpos_qk_eager(query, key, cos_q, sin_q, cos_k, sin_k):
    """The fused arithmetic in plain torch (fp32 math, one rounding); compiled by `_compiled_xpos_qk`."""
    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        xf = x.float()
        x1, x2 = xf[..., :half], xf[..., half:]
        c, sn = cos[:, None, None, :], sin[:, None, None, :]
        out = torch.cat([x1 * c - x2 * sn, x2 * c + x1 * sn], dim=-1).to(x.dtype)
        return out.permute(1, 2, 0, 3).contiguous()

    return rotate(query, cos_q, sin_q), rotate(key, cos_k, sin_k)


@lru_cache(maxsize=None)
def _compiled_xpos_qk():
    return torch.compile(_xpos_qk_eager, fullgraph=True, dynamic=False)


# --- dispatch -------------------------------------------------------------------------------------
def resolve_xpos_impl(impl: str | None = None, device: torch.device | None = None) -> str:
    """The implementation to use: an explicit one, else FLM_XPOS_IMPL, else 'auto' for the device."""
    impl = impl or os.environ.get("FLM_XPOS_IMPL", "auto")
    if impl not in XPOS_IMPLS:
        raise ValueError(f"xPos implementation {impl!r} is unknown; choose one of {XPOS_IMPLS}")
    if impl != "auto":
        return impl
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if not on_cuda:
        return "reference"
    return "triton" if triton_available() else "compiled"


def half_tables(positions: XPosEmbedding, length: int, offset: int, device: torch.device):
    """fp32 (cos_q, sin_q, cos_k, sin_k), each [length, d/2] and contiguous (the fused paths' tables)."""
    key = (length, offset, device)
    cache = positions.__dict__.setdefault("_half_cache", {})
    if key not in cache:
        half = positions.head_dim // 2
        full = positions.tables(length, offset, device, torch.float32)
        cache.clear()
        cache[key] = tuple(t[:, :half].contiguous() for t in full)
    return cache[key]


def apply_xpos_qk(query: torch.Tensor, key: torch.Tensor, positions: XPosEmbedding, *, offset: int = 0,
                  impl: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """query, key [s, b, heads, d] -> rotated (and decayed) query, key as [b, heads, s, d] for SDPA."""
    if impl == "reference":
        q, k = positions(query, key, offset=offset)
        return q.permute(1, 2, 0, 3), k.permute(1, 2, 0, 3)
    tables = half_tables(positions, query.shape[0], offset, query.device)
    if impl == "triton" and query.shape == key.shape:  # (the kernel pairs q and k rows: no GQA)
        return _TritonXPosQK.apply(query, key, *tables)
    if impl in ("compiled", "triton"):
        return _compiled_xpos_qk()(query, key, *tables)
    raise ValueError(f"xPos implementation {impl!r} is unknown; choose one of {XPOS_IMPLS[1:]}")


# --- SDPA backends --------------------------------------------------------------------------------
_SDPA_NAMES = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
               "math": "MATH"}


@lru_cache(maxsize=None)
def _sdpa_backend_list(spec: str):
    from torch.nn.attention import SDPBackend

    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in _SDPA_NAMES]
    if unknown:
        raise ValueError(f"FLM_SDPA_BACKENDS: unknown backend(s) {unknown}; known: {sorted(_SDPA_NAMES)}")
    return [getattr(SDPBackend, _SDPA_NAMES[n]) for n in names]


def sdpa_backends(device: torch.device):
    """A context choosing SDPA's kernels in FLM_SDPA_BACKENDS order on CUDA; nothing on CPU or when unset."""
    spec = os.environ.get("FLM_SDPA_BACKENDS", "")
    if device.type != "cuda" or not spec:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(_sdpa_backend_list(spec), set_priority=True)


# --- megatron's own fusions (flm_ext.config.gpu_fusion_overrides) and the optimizer ------------------
def use_fused_adam(optimizer) -> int:
    """Switch megatron's torch-AdamW fallback to torch's fused kernel; returns param groups switched.

    Call before the first step (optimizer state is made lazily). fp32 parameters on CUDA or CPU
    (torch has a fused AdamW for both); a no-op when apex/TE supplied the optimizer (already fused).
    """
    switched = 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", opt)
        if not isinstance(inner, torch.optim.AdamW):
            continue
        for group in inner.param_groups:
            if group["params"] and all(p.device.type in ("cuda", "cpu") and p.dtype == torch.float32 for p in group["params"]):
                group["fused"], group["foreach"] = True, False
                switched += 1
        inner.defaults["fused"], inner.defaults["foreach"] = True, False
    return switched


__all__ = ["XPOS_IMPLS", "apply_xpos_qk", "resolve_xpos_impl", "half_tables", "triton_available", "sdpa_backends",
           "gpu_fusion_overrides", "use_fused_adam"]
