"""The Triton kernel behind `fused.apply_xpos_qk(impl="triton")`: rotary + xPos on q and k in one launch.

Imported lazily (only when that path runs), so machines without triton never import it. Each
program takes BLOCK_ROWS head vectors of q and the same rows of k, reads each value once, applies
the folded rotation-and-decay tables in fp32 and writes once, in any (s, b, h) layout given by
strides: forward reads megatron's [s, b, h, d] views and writes SDPA's [b, h, s, d]; the
backward (SIGN = -1, the transposed rotation with the same tables) goes the other way.
"""
import triton
import triton.language as tl


@triton.jit
def _rotate_rows(x_ptr, o_ptr, cos_ptr, sin_ptr, rows, n_rows, B, H, xs_s, xs_b, xs_h, os_s, os_b, os_h,
                 SIGN: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    # rows index (s, b, h) in s-major order; each row is one head vector of d = 2 * HALF values,
    # paired rotate-half style: (x[i], x[i + d/2]).
    cols = tl.arange(0, BLOCK_HALF)
    mask = (rows < n_rows)[:, None] & (cols < HALF)[None, :]
    h = rows % H
    b = (rows // H) % B
    s = rows // (H * B)
    x_row = (s * xs_s + b * xs_b + h * xs_h)[:, None] + cols[None, :]
    o_row = (s * os_s + b * os_b + h * os_h)[:, None] + cols[None, :]
    t_off = s[:, None] * HALF + cols[None, :]
    c = tl.load(cos_ptr + t_off, mask=mask, other=0.0)
    sn = tl.load(sin_ptr + t_off, mask=mask, other=0.0) * SIGN
    x1 = tl.load(x_ptr + x_row, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_row + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + o_row, (x1 * c - x2 * sn).to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(o_ptr + o_row + HALF, (x2 * c + x1 * sn).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def xpos_qk_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, cq_ptr, sq_ptr, ck_ptr, sk_ptr, n_rows, B, H,
                   qs_s, qs_b, qs_h, ks_s, ks_b, ks_h, qos_s, qos_b, qos_h, kos_s, kos_b, kos_h,
                   SIGN: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    _rotate_rows(q_ptr, qo_ptr, cq_ptr, sq_ptr, rows, n_rows, B, H, qs_s, qs_b, qs_h, qos_s, qos_b, qos_h,
                 SIGN, HALF, BLOCK_HALF)
    _rotate_rows(k_ptr, ko_ptr, ck_ptr, sk_ptr, rows, n_rows, B, H, ks_s, ks_b, ks_h, kos_s, kos_b, kos_h,
                 SIGN, HALF, BLOCK_HALF)


def launch(q, k, qo, ko, tables, sign: int, in_strides, out_strides, s: int, b: int, h: int) -> None:
    """Rotate q, k into qo, ko; strides are (s, b, h) strides of q, k, qo, ko (last dim contiguous)."""
    half = q.shape[-1] // 2
    n_rows = s * b * h
    block_half = triton.next_power_of_2(half)
    block_rows = max(1, min(64, 4096 // block_half))
    grid = (triton.cdiv(n_rows, block_rows),)
    xpos_qk_kernel[grid](q, k, qo, ko, *tables, n_rows, b, h, *in_strides[0], *in_strides[1],
                         *out_strides[0], *out_strides[1],
                         SIGN=sign, HALF=half, BLOCK_HALF=block_half, BLOCK_ROWS=block_rows)
