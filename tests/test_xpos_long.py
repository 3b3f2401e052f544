"""xPos at long positions: the decay relative to each block (model/xpos.py, model/xpos_blocks.py).

References: the xPos formula in float64 (tests/reference_flm.py) with one fixed center, and an
explicit masked softmax. The tiny shapes use FLM's ratio scale_base = W / 4 (512 for 2048), so
the factors at 32k positions are those of FLM at 512k: far past any dtype's range under one center.
"""
import math

import pytest
import torch

import reference_flm
from flm_ext.model.xpos import XPosEmbedding, apply_rotary, block_decay, rotary_tables, xpos_decay
from flm_ext.model.xpos_blocks import block_attention

D = 16


def _reference_attention(q, k, v, scale, *, base, scale_base, center, start=0):
    """softmax(scale * xPos scores) v in float64 with ONE fixed center; q at start.., k, v at 0.. ([b, h, s, d])."""
    s, length = q.shape[-2], k.shape[-2]
    zq = reference_flm.xpos_complex(q, torch.arange(start, start + s), base=base, scale_base=scale_base,
                                    center=center, is_query=True)
    zk = reference_flm.xpos_complex(k, torch.arange(length), base=base, scale_base=scale_base, center=center,
                                    is_query=False)
    att = torch.einsum("...nd,...md->...nm", zq, zk.conj()).real * scale
    causal = torch.arange(length)[None, :] <= torch.arange(start, start + s)[:, None]
    return att.masked_fill(~causal, float("-inf")).softmax(-1) @ v.double()


def _blocked(x, positions, xpos, is_query):
    """x [b, h, s, d] with the block-referenced xPos tables of `xpos` at `positions`."""
    cos_q, sin_q, cos_k, sin_k = rotary_tables(positions, x.shape[-1], base=xpos.base, scale_base=xpos.scale_base,
                                               center=xpos.center, block=xpos.block)
    cos, sin = (cos_q, sin_q) if is_query else (cos_k, sin_k)
    # apply_rotary takes [s, b, h, d]; the tensors here are [b, h, s, d]
    return apply_rotary(x.permute(2, 0, 1, 3), cos.to(x.dtype), sin.to(x.dtype)).permute(1, 2, 0, 3)


@pytest.mark.parametrize("start, s", [(0, 83), (70, 13), (82, 1)])
def test_block_scheme_equals_the_formula_in_float64(start, s):
    """Queries at start.., keys at 0..82 over six blocks of 16: equal to one-center xPos (float64)."""
    w, sb, length = 16, 4.0, 83
    xpos = XPosEmbedding(D, base=10000.0, scale_base=sb, center=w / 2, block=w)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, s, D, generator=gen, dtype=torch.float64)
    k, v = torch.randn(2, 2, 3, length, D, generator=gen, dtype=torch.float64)
    qx = _blocked(q, torch.arange(start, start + s), xpos, True)
    kx = _blocked(k, torch.arange(length), xpos, False)
    decay = xpos.block_decay(-(-length // w), q.device, q.dtype)
    got = block_attention(qx, kx, v, start=start, block=w, decay=decay, scale=D ** -0.5)
    expected = _reference_attention(q, k, v, D ** -0.5, base=10000.0, scale_base=sb, center=w / 2, start=start)
    assert (got - expected).abs().max().item() <= 1e-12


def test_grouped_queries_and_an_extra_mask():
    w, sb, length = 8, 2.0, 40
    xpos = XPosEmbedding(D, base=10000.0, scale_base=sb, center=w / 2, block=w)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, length, D, generator=gen, dtype=torch.float64)
    k, v = torch.randn(2, 1, 2, length, D, generator=gen, dtype=torch.float64)
    allowed = torch.rand(1, 1, length, length, generator=gen) > 0.3
    allowed |= torch.eye(length, dtype=torch.bool)
    pos = torch.arange(length)
    got = block_attention(_blocked(q, pos, xpos, True), _blocked(k, pos, xpos, False), v, start=0, block=w,
                          decay=xpos.block_decay(length // w, q.device, q.dtype), scale=0.3, allowed=allowed)
    zq = reference_flm.xpos_complex(q, pos, base=10000.0, scale_base=sb, center=w / 2, is_query=True)
    zk = reference_flm.xpos_complex(k.repeat_interleave(2, dim=1), pos, base=10000.0, scale_base=sb,
                                    center=w / 2, is_query=False)
    att = torch.einsum("...nd,...md->...nm", zq, zk.conj()).real * 0.3
    keep = allowed & torch.ones(length, length, dtype=torch.bool).tril()
    expected = att.masked_fill(~keep, float("-inf")).softmax(-1) @ v.repeat_interleave(2, dim=1)
    assert (got - expected).abs().max().item() <= 1e-12
    # the same rule as a function of (query positions, key positions)
    rule = lambda qp, kp: allowed[0, 0][qp][:, kp]  # noqa: E731
    again = block_attention(_blocked(q, pos, xpos, True), _blocked(k, pos, xpos, False), v, start=0, block=w,
                            decay=xpos.block_decay(length // w, q.device, q.dtype), scale=0.3, allowed=rule)
    assert torch.equal(again, got)


def test_first_block_is_the_old_scheme_bit_for_bit_and_later_blocks_stay_bounded():
    """FLM's numbers (W 2048, scale base 512, d 128) up to 64k positions."""
    d, w, sb = 128, 2048, 512.0
    old = rotary_tables(torch.arange(w), d, scale_base=sb, center=w / 2)
    new = rotary_tables(torch.arange(w), d, scale_base=sb, center=w / 2, block=w)
    assert all(torch.equal(a, b) for a, b in zip(old, new))
    far = torch.arange(0, 65536, 7)
    bound = xpos_decay(d)[0].item() ** (-(w / 2) / sb)  # zeta_0^-2, about 12.3
    for dtype in (torch.float16, torch.bfloat16):
        tabs = [t.to(dtype) for t in rotary_tables(far, d, scale_base=sb, center=w / 2, block=w)]
        assert all(torch.isfinite(t).all() and t.abs().max().item() <= bound * 1.01 for t in tabs)
        # the old single center overflows: the case this scheme exists for
        assert not torch.isfinite(rotary_tables(far, d, scale_base=sb, center=w / 2)[2].to(dtype)).all()
    decay = block_decay(d, w, sb, torch.arange(32))
    assert decay.max().item() == 1.0 and (decay[1:] < 1).all()


@pytest.mark.slow
def test_core_attention_at_32k_positions_in_bf16(megatron_single_process):
    """FLMCoreAttention (the trainer path) over 32k positions in bf16: finite, and its last 32 rows
    equal the float64 formula within bf16 tolerance."""
    from megatron.core.transformer.enums import AttnMaskType

    from flm_ext.config import FLMConfig, to_transformer_config
    from flm_ext.model.attention import FLMCoreAttention

    w, s, h = 128, 32768, 1
    cfg = FLMConfig(num_layers=1, hidden_size=h * D, num_attention_heads=h, seq_length=w, vocab_size=128,
                    xpos_scale_base=w // 4)
    attn = FLMCoreAttention(to_transformer_config(cfg), 1, AttnMaskType.causal, "self", xpos_center=w / 2,
                            xpos_scale_base=w / 4, xpos_block=w)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(s, 1, h, D, generator=gen) for _ in range(3))
    out = attn(q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    assert torch.isfinite(out).all()
    qh, kh, vh = (t.bfloat16().permute(1, 2, 0, 3).double() for t in (q, k, v))
    rows = 32
    # the center cancels in the formula; near the queries it keeps float64 in range (keys far back underflow
    # to 0, where their exact weight is below 1e-300 anyway)
    expected = _reference_attention(qh[:, :, -rows:], kh, vh, D ** -0.5, base=10000.0, scale_base=w / 4,
                                    center=s - rows, start=s - rows)
    got = out[-rows:].double().view(rows, 1, h, D).permute(1, 2, 0, 3)
    assert (got - expected).abs().max().item() <= 2e-2 * expected.abs().max().item()


# --- the export (flm_ext/export/modeling_flm.py) -------------------------------------------------------------------
def _export_model(dtype, **overrides):
    from flm_ext.export.configuration_flm import FLMConfig
    from flm_ext.export.modeling_flm import FLMForCausalLM

    fields = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=64, xpos_scale_base=16.0)
    fields.update(overrides)
    torch.manual_seed(0)
    model = FLMForCausalLM(FLMConfig(**fields)).eval()
    with torch.no_grad():  # larger weights than the init, so attention is far from uniform
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else p.normal_(0, 0.1)
    return model.to(dtype)


def test_export_past_one_block_equals_one_fixed_center_in_float64():
    """Four blocks and a bit, float64: the block path's logits equal the same weights with one fixed
    center (the old scheme, still finite in float64 at this length), full forward and cached decode."""
    tokens = torch.randint(0, 96, (2, 4 * 64 + 9), generator=torch.Generator().manual_seed(4))
    blocked = _export_model(torch.float64)
    fixed = _export_model(torch.float64, xpos_block=10 ** 9)
    with torch.no_grad():
        expected = fixed(tokens).logits
        got = blocked(tokens).logits
        out = blocked(tokens[:, :-20], use_cache=True)
        cache, steps = out.past_key_values, []
        for t in range(tokens.shape[1] - 20, tokens.shape[1]):
            out = blocked(tokens[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[:, -1])
    assert (got - expected).abs().max().item() <= 1e-9 * expected.abs().max().item()
    assert (torch.stack(steps, 1) - expected[:, -20:]).abs().max().item() <= 1e-9 * expected.abs().max().item()


@pytest.mark.slow
def test_export_32k_forward_and_64_step_cached_decode_in_bf16():
    """The issue's check: a 32k-position bf16 forward of a tiny model (training length 64, scale base
    16: FLM's ratio) is finite, and 64 decode steps at 32k from the keys it cached (never recomputed)
    equal its logits within bf16 tolerance."""
    n, steps = 32768, 64
    model = _export_model(torch.bfloat16, num_hidden_layers=2, num_attention_heads=1, hidden_size=16)
    tokens = torch.randint(0, 96, (1, n), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(tokens, use_cache=True)
        full, cache = out.logits, out.past_key_values
        assert torch.isfinite(full).all()
        cache.crop(-steps)  # keep the keys of the first n - 64 positions, as the full forward cached them
        decoded = []
        for t in range(n - steps, n):
            out = model(tokens[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            decoded.append(out.logits[:, -1])
    decoded = torch.stack(decoded, 1).float()
    expected = full[:, -steps:].float()
    assert torch.isfinite(decoded).all()
    assert (decoded - expected).abs().max().item() <= 2e-2 * expected.abs().max().item()
    assert (decoded.argmax(-1) == expected.argmax(-1)).float().mean().item() >= 0.9


# --- the released config's scale_attn_by_inverse_layer_idx (docs/FLM.md section 7) -----------------------------------
def _gpt2_style_attention(q, k, v, layer_idx, *, use_mup, center, scale_base=512.0):
    """GPT-2's attention with scale_attn_weights, scale_attn_by_inverse_layer_idx and
    reorder_and_upcast_attn, written out: q and k upcast to fp32 (here float64), the scale
    (1/sqrt(d), or 1/d under µP) times 1/(layer_idx + 1) folded into the product, causal mask,
    softmax, weights @ v. q, k, v: [b, h, s, d] before xPos (applied by reference_flm)."""
    s, d = q.shape[-2], q.shape[-1]
    zq = reference_flm.xpos_complex(q, torch.arange(s), base=10000.0, scale_base=scale_base, center=center,
                                    is_query=True)
    zk = reference_flm.xpos_complex(k, torch.arange(s), base=10000.0, scale_base=scale_base, center=center,
                                    is_query=False)
    alpha = (1.0 / d if use_mup else 1.0 / math.sqrt(d)) / float(layer_idx + 1)
    w = torch.einsum("...nd,...md->...nm", zq * alpha, zk.conj()).real
    w = w.masked_fill(~torch.ones(s, s, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    return w @ v.double()


@pytest.mark.parametrize("use_mup", [False, True])
def test_scale_attn_by_inverse_layer_idx_trainer_and_export(megatron_single_process, use_mup):
    from megatron.core.transformer.enums import AttnMaskType

    from flm_ext.config import FLMConfig, to_transformer_config
    from flm_ext.export.configuration_flm import FLMConfig as ExportConfig
    from flm_ext.export.modeling_flm import FLMAttention, xpos_tables

    layer_idx, s, h = 2, 40, 2  # the third layer: scores / 3
    cfg = FLMConfig(num_layers=4, hidden_size=h * D, num_attention_heads=h, seq_length=s, vocab_size=128,
                    use_mup=use_mup, scale_attn_by_inverse_layer_idx=True)
    tc = to_transformer_config(cfg)
    from flm_ext.model.attention import FLMCoreAttention

    attn = FLMCoreAttention(tc, layer_idx + 1, AttnMaskType.causal, "self", softmax_scale=tc.softmax_scale,
                            xpos_center=s / 2, xpos_block=s, scale_by_inverse_layer=True)
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(s, 1, h, D, generator=gen) * 3 for _ in range(3))
    expected = _gpt2_style_attention(*(t.permute(1, 2, 0, 3) for t in (q, k, v)), layer_idx, use_mup=use_mup,
                                     center=s / 2)
    got = attn(q, k, v, None).view(s, 1, h, D).permute(1, 2, 0, 3)
    assert (got.double() - expected).abs().max().item() <= 1e-5
    plain = FLMCoreAttention(tc, layer_idx + 1, AttnMaskType.causal, "self", softmax_scale=tc.softmax_scale,
                             xpos_center=s / 2, xpos_block=s)
    assert (plain(q, k, v, None).view(s, 1, h, D).permute(1, 2, 0, 3).double() - expected).abs().max().item() > 1e-2

    # the export's attention module, fed the same q, k, v: identity projections, input [q_h, k_h, v_h] per head
    ecfg = ExportConfig(vocab_size=128, hidden_size=h * D, num_hidden_layers=4, num_attention_heads=h,
                        max_position_embeddings=s, use_mup=use_mup, scale_attn_by_inverse_layer_idx=True)
    ecfg._attn_implementation = "sdpa"
    eattn = FLMAttention(ecfg, layer_idx).double()
    eattn.qkv_proj = torch.nn.Linear(3 * h * D, 3 * h * D).double()
    with torch.no_grad():
        eattn.qkv_proj.weight.copy_(torch.eye(3 * h * D, dtype=torch.float64))
        eattn.qkv_proj.bias.zero_()
        eattn.o_proj.weight.copy_(torch.eye(h * D, dtype=torch.float64))
        eattn.o_proj.bias.zero_()
        x = torch.cat([q, k, v], dim=-1).reshape(1, s, 3 * h * D).double()
        tabs = tuple(t[None, None] for t in xpos_tables(torch.arange(s), D, 10000.0, 512.0, s / 2)) + (None,)
        out = eattn(x, tabs)  # sdpa, causal
    assert (out.view(1, s, h, D).transpose(1, 2) - expected).abs().max().item() <= 1e-10


def test_scale_attn_by_inverse_layer_idx_flag_and_import():
    """The trainer flag sets the field; an export's config.json field comes back on import."""
    from flm_ext.export.importer import training_config
    from flm_ext.training.arguments import build_parser, model_config_from_args

    parser = build_parser()
    on = model_config_from_args(parser.parse_args(["--model-preset", "tiny-test", "--scale-attn-by-inverse-layer-idx"]))
    off = model_config_from_args(parser.parse_args(["--model-preset", "tiny-test"]))
    assert on.scale_attn_by_inverse_layer_idx and not off.scale_attn_by_inverse_layer_idx
    fields = dict(num_attention_heads=4, head_dim=8, hidden_size=32, num_hidden_layers=2, intermediate_size=128,
                  max_position_embeddings=32, vocab_size=256, position_embedding_type="xpos", rope_theta=10000.0,
                  layer_norm_eps=1e-5, tie_word_embeddings=True, xpos_scale_base=512.0)
    assert training_config({**fields, "scale_attn_by_inverse_layer_idx": True}, "x").scale_attn_by_inverse_layer_idx
    assert not training_config(fields, "x").scale_attn_by_inverse_layer_idx
