"""xPos in the model's attention path against the formula in docs/FLM.md section 1.1 (float64 reference)."""
import math

import pytest
import torch

import reference_flm
from flm_ext.model.xpos import XPosEmbedding, xpos_decay

D, S = 128, 2048  # FLM's head dim and context


def _model_scores(q, k, offset=0, scale_base=512.0):
    """q.k after the model's xPos module; q, k: [s, d]."""
    xpos = XPosEmbedding(q.shape[-1], base=10000.0, scale_base=scale_base, center=S / 2)
    qx, kx = xpos(q[:, None, None, :], k[:, None, None, :], offset=offset)
    return qx[:, 0, 0] @ kx[:, 0, 0].T


def _relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_decay_constants():
    zeta = xpos_decay(D)
    assert zeta[0].item() == pytest.approx(0.4 / 1.4) and zeta[-1].item() == pytest.approx((126 / 128 + 0.4) / 1.4)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-6)])
def test_scores_equal_the_formula(dtype, tolerance):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, S, D, generator=gen, dtype=torch.float64)
    expected = reference_flm.scores(q, k, torch.arange(S), base=10000.0, scale_base=512.0, center=S / 2)
    got = _model_scores(q.to(dtype), k.to(dtype)).double()
    assert _relative_error(got, expected) <= tolerance


def test_scores_decay_with_distance_per_the_closed_form():
    # One frequency pair, q = k = e_i: q.k = zeta_i^((n-m)/512) cos((n-m) theta_i).
    i = 5
    q = torch.zeros(S, D, dtype=torch.float64)
    q[:, i] = 1.0
    got = _model_scores(q, q.clone())
    delta = torch.arange(S, dtype=torch.float64)[:, None] - torch.arange(S, dtype=torch.float64)[None, :]
    zeta, theta = (2 * i / D + 0.4) / 1.4, 10000 ** (-2 * i / D)
    expected = zeta ** (delta / 512) * torch.cos(delta * theta)
    assert _relative_error(got, expected) <= 1e-10


def test_scores_depend_only_on_relative_position():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 256, D, generator=gen)
    base = _model_scores(q, k, offset=0)
    for shift in (1, 37, 1000):
        assert _relative_error(_model_scores(q, k, offset=shift), base) <= 1e-6


def test_rope_mode_has_no_decay():
    gen = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 64, D, generator=gen, dtype=torch.float64)
    expected = reference_flm.scores(q, k, torch.arange(64), base=10000.0, scale_base=None, center=0.0)
    assert _relative_error(_model_scores(q, k, scale_base=None), expected) <= 1e-10


@pytest.mark.parametrize("scale", [None, 1 / 16])
def test_core_attention_equals_reference_softmax(megatron_single_process, scale):
    """FLMCoreAttention (xPos + SDPA, causal) against explicit softmax(scale q.k) v in float64."""
    from megatron.core.transformer.enums import AttnMaskType

    from flm_ext.config import FLMConfig, to_transformer_config
    from flm_ext.model.attention import FLMCoreAttention

    cfg = FLMConfig(num_layers=1, hidden_size=64, num_attention_heads=4, seq_length=48, vocab_size=128)
    attn = FLMCoreAttention(to_transformer_config(cfg), 1, AttnMaskType.causal, "self", softmax_scale=scale,
                            xpos_center=cfg.seq_length / 2)
    gen = torch.Generator().manual_seed(3)
    s, b, h, d = cfg.seq_length, 2, cfg.num_attention_heads, cfg.head_dim
    q, k, v = (torch.randn(s, b, h, d, generator=gen) for _ in range(3))
    out = attn(q, k, v, None)
    qh, kh, vh = (t.permute(1, 2, 0, 3).double() for t in (q, k, v))  # [b, h, s, d]
    att = reference_flm.scores(qh, kh, torch.arange(s), base=10000.0, scale_base=512.0, center=s / 2)
    att = att * (scale if scale is not None else 1 / math.sqrt(d))
    att = att.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    expected = (att @ vh).permute(2, 0, 1, 3).reshape(s, b, h * d)
    assert out.shape == (s, b, h * d)
    assert (out.double() - expected).abs().max().item() <= 1e-5
