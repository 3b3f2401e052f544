"""An independent float64 forward pass of a grown FLM model with MSG masks, from docs/FLM.md section 3.

Shares no code with flm_ext (xPos scores come from reference_flm, itself independent): masks are
explicit vectors, the mask-weighted LayerNorm is written out, a new layer is an explicit blend.
`lam` is the mask value of every new coordinate; old coordinates have 1.
"""
from __future__ import annotations

import math

import torch

from reference_flm import scores


def _masked_ln(x, c, w, b, eps):
    mu = (x * c).sum(-1, keepdim=True) / c.sum()
    var = (c * (x - mu) ** 2).sum(-1, keepdim=True) / c.sum()
    return ((x - mu) / torch.sqrt(var + eps) * w + b) * c


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _mask(size, old, lam):
    c = torch.ones(size, dtype=torch.float64)
    c[old:] = lam
    return c


def logits(state: dict, cfg, tokens: torch.Tensor, *, old_hidden: int, old_heads: int, old_ffn: int,
           new_layers, lam: float) -> torch.Tensor:
    st = {k: v.double() for k, v in state.items()}
    L = lambda name: st[f"decoder.layers.{name}"]  # noqa: E731
    b, s = tokens.shape
    heads, hd = cfg.num_attention_heads, cfg.head_dim
    c = _mask(cfg.hidden_size, old_hidden, lam)
    head_c = _mask(heads, old_heads, lam)
    ffn_c = _mask(cfg.ffn_hidden_size, old_ffn, lam)
    if cfg.use_mup:
        m = cfg.mup_width_mult_override or cfg.hidden_size / cfg.mup_base_width
    emb = st["embedding.word_embeddings.weight"]
    x = emb[tokens] * (cfg.mup_input_mult if cfg.use_mup else 1.0) * c
    pos = torch.arange(s)
    scale = 1 / hd if cfg.use_mup else 1 / math.sqrt(hd)
    xpos = dict(base=cfg.rotary_base, center=cfg.seq_length / 2,
                scale_base=cfg.xpos_scale_base if cfg.position_embedding == "xpos" else None)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    eps = cfg.layernorm_epsilon
    for l in range(cfg.num_layers):
        h = _masked_ln(x, c, L("input_layernorm.weight")[l], L("input_layernorm.bias")[l], eps)
        qkv = h @ L("self_attention.linear_qkv.weight")[l].T + L("self_attention.linear_qkv.bias")[l]
        qkv = qkv.view(b, s, heads, 3, hd) * head_c[None, None, :, None, None]
        q, k, v = qkv.permute(3, 0, 2, 1, 4)  # each [b, heads, s, hd]
        att = (scores(q, k, pos, **xpos) * scale).masked_fill(~causal, float("-inf")).softmax(-1)
        ctx = (att @ v).permute(0, 2, 1, 3).reshape(b, s, heads * hd)
        y = x + (ctx @ L("self_attention.linear_proj.weight")[l].T + L("self_attention.linear_proj.bias")[l]) * c
        h = _masked_ln(y, c, L("pre_mlp_layernorm.weight")[l], L("pre_mlp_layernorm.bias")[l], eps)
        up = _gelu_tanh((h @ L("mlp.linear_fc1.weight")[l].T + L("mlp.linear_fc1.bias")[l]) * ffn_c)
        y = y + (up @ L("mlp.linear_fc2.weight")[l].T + L("mlp.linear_fc2.bias")[l]) * c
        x = lam * y + (1 - lam) * x if l in new_layers else y
    x = _masked_ln(x, c, st["decoder.final_layernorm.weight"], st["decoder.final_layernorm.bias"], eps)
    if cfg.use_mup:
        x = x * cfg.mup_output_mult / m
    return x @ emb.T
