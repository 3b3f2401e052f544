"""An independent, straightforward float64 FLM forward pass written from docs/FLM.md (section 1).

It shares no code with flm_ext: xPos here is complex-number rotation with an explicit per-pair
decay, attention is an explicit masked softmax, and the weights come from the global state dict
(megatron's QKV rows are grouped per head as [q_h, k_h, v_h]).
"""
from __future__ import annotations

import math

import torch


def xpos_complex(x: torch.Tensor, positions: torch.Tensor, *, base: float, scale_base: float | None,
                 center: float, is_query: bool) -> torch.Tensor:
    """x: [..., s, d] real -> [..., s, d/2] complex, pair i = (x[i], x[i + d/2])."""
    d = x.shape[-1]
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())
    i = torch.arange(d // 2, dtype=torch.float64)
    theta = base ** (-2 * i / d)
    n = positions.double()[:, None]
    rotated = z * torch.exp(1j * n * theta)
    if scale_base is None:
        return rotated
    zeta = (2 * i / d + 0.4) / 1.4
    power = (n - center) / scale_base
    return rotated * (zeta ** (power if is_query else -power))


def scores(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, **xpos) -> torch.Tensor:
    """Unscaled q.k for every (n, m): real part of sum_i zq_i conj(zk_i)."""
    zq = xpos_complex(q, positions, is_query=True, **xpos)
    zk = xpos_complex(k, positions, is_query=False, **xpos)
    return torch.einsum("...nd,...md->...nm", zq, zk.conj()).real


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def logits(state: dict, cfg, tokens: torch.Tensor) -> torch.Tensor:
    """[b, s] token ids -> [b, s, vocab] float64 logits."""
    st = {k: v.double() for k, v in state.items()}
    L = lambda name: st[f"decoder.layers.{name}"]  # noqa: E731  stacked over layers
    b, s = tokens.shape
    heads, hd = cfg.num_attention_heads, cfg.head_dim
    m = cfg.hidden_size / cfg.mup_base_width if cfg.use_mup else 1.0
    emb = st["embedding.word_embeddings.weight"]
    x = emb[tokens] * (cfg.mup_input_mult if cfg.use_mup else 1.0)
    pos = torch.arange(s)
    scale = 1 / hd if cfg.use_mup else 1 / math.sqrt(hd)
    xpos = dict(base=cfg.rotary_base, center=cfg.seq_length / 2,
                scale_base=cfg.xpos_scale_base if cfg.position_embedding == "xpos" else None)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for l in range(cfg.num_layers):
        h = _layer_norm(x, L("input_layernorm.weight")[l], L("input_layernorm.bias")[l], cfg.layernorm_epsilon)
        qkv = h @ L("self_attention.linear_qkv.weight")[l].T + L("self_attention.linear_qkv.bias")[l]
        qkv = qkv.view(b, s, heads, 3, hd).permute(3, 0, 2, 1, 4)  # [3, b, heads, s, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = scores(q, k, pos, **xpos) * scale
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        ctx = (att @ v).permute(0, 2, 1, 3).reshape(b, s, heads * hd)
        x = x + ctx @ L("self_attention.linear_proj.weight")[l].T + L("self_attention.linear_proj.bias")[l]
        h = _layer_norm(x, L("pre_mlp_layernorm.weight")[l], L("pre_mlp_layernorm.bias")[l], cfg.layernorm_epsilon)
        up = _gelu_tanh(h @ L("mlp.linear_fc1.weight")[l].T + L("mlp.linear_fc1.bias")[l])
        x = x + up @ L("mlp.linear_fc2.weight")[l].T + L("mlp.linear_fc2.bias")[l]
    x = _layer_norm(x, st["decoder.final_layernorm.weight"], st["decoder.final_layernorm.bias"], cfg.layernorm_epsilon)
    if cfg.use_mup:
        x = x * cfg.mup_output_mult / m
    return x @ emb.T
