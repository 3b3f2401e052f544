"""transformers model of an exported FLM checkpoint: `FLMForCausalLM` (plain torch + SDPA).

Standalone (imports only torch, transformers and `configuration_flm` next to it), so an exported
folder loads with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.

It computes what the training model computes (docs/FLM.md, section 1): pre-LN blocks, biases on
every linear, GeLU(tanh) MLP, tied embeddings, xPos on q and k. The arithmetic follows the
training code step by step (matmul then bias, bias added before the residual, xPos tables in
float64 then cast), so fp32 logits agree to ~1e-6. Layout notes:

- `qkv_proj` keeps the training layout: rows grouped per head, [q_h, k_h, v_h] for head h.
- xPos uses rotate-half pairs (x[i], x[i + d/2]); the query at position n is rotated by n * theta_i
  and scaled by zeta_i^((n - c)/scale_base), the key at m by m * theta_i and zeta_i^(-(m - c)/scale_base),
  with c = `xpos_center`. c is fixed, so keys are cached after xPos and stay valid: with a KV
  cache the new tokens take positions past .. past + s - 1.
- Positions are the cache offsets, also under left padding: xPos and RoPE scores depend only on
  n - m, so the offset a pad adds changes nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_flm import FLMConfig

# transformers renamed the cache field of model outputs (past_key_values -> cache); use what it has.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def xpos_tables(positions: torch.Tensor, head_dim: int, base: float, scale_base: float | None, center: float):
    """(cos_q, sin_q, cos_k, sin_k), each [len(positions), head_dim], in float64."""
    pos = positions.to(torch.float64)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(pos, inv_freq)
    cos, sin = torch.cos(angles), torch.sin(angles)
    if scale_base is None:
        q_scale = k_scale = torch.ones_like(angles)
    else:
        i = torch.arange(0, head_dim // 2, dtype=torch.float64)
        zeta = (2 * i / head_dim + 0.4) / 1.4
        q_scale = zeta[None, :] ** ((pos - center) / scale_base)[:, None]
        k_scale = 1.0 / q_scale
    return tuple(torch.cat([t, t], dim=-1) for t in (cos * q_scale, sin * q_scale, cos * k_scale, sin * k_scale))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """matmul, then bias (the training code's order)."""
    out = torch.matmul(x, layer.weight.t())
    return out + layer.bias if layer.bias is not None else out


class FLMLayerNorm(nn.LayerNorm):
    """LayerNorm; with `stat_mask` (an MSG ramp, see configuration_flm) mask-weighted statistics."""

    def __init__(self, config: FLMConfig):
        super().__init__(config.hidden_size, eps=config.layer_norm_eps)
        self.stat_mask = None
        if config.growth_norm_mask is not None:
            old, lam = config.growth_norm_mask
            new = (torch.arange(config.hidden_size, device="cpu") >= int(old)).to(torch.float64)
            self.stat_mask = 1.0 - new * (1.0 - float(lam))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stat_mask is None:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        dtype = torch.promote_types(x.dtype, torch.float32)
        xf, c = x.to(dtype), self.stat_mask.to(device=x.device, dtype=dtype)
        total = c.sum()
        mu = (xf * c).sum(-1, keepdim=True) / total
        centred = xf - mu
        var = (centred * centred * c).sum(-1, keepdim=True) / total
        return (centred * torch.rsqrt(var + self.eps) * self.weight.to(dtype) + self.bias.to(dtype)).to(x.dtype)


class FLMAttention(nn.Module):
    def __init__(self, config: FLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        width = self.heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * width)
        self.o_proj = nn.Linear(width, config.hidden_size)
        self.scale = 1.0 / self.head_dim if config.use_mup else self.head_dim ** -0.5

    def forward(self, x, tables, cache: Cache | None, mask: torch.Tensor | None, causal: bool):
        b, s, _ = x.shape
        qkv = linear(x, self.qkv_proj).view(b, s, self.heads, 3 * self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.split(self.head_dim, dim=-1))  # [b, h, s, d]
        cos_q, sin_q, cos_k, sin_k = tables
        q = q * cos_q + rotate_half(q) * sin_q
        k = k * cos_k + rotate_half(k) * sin_k
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                                 scale=self.scale)
        return torch.matmul(context.transpose(1, 2).reshape(b, s, -1), self.o_proj.weight.t())


class FLMMLP(nn.Module):
    def __init__(self, config: FLMConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return torch.matmul(F.gelu(linear(x, self.fc1), approximate="tanh"), self.fc2.weight.t())


class FLMDecoderLayer(nn.Module):
    def __init__(self, config: FLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = FLMLayerNorm(config)
        self.self_attn = FLMAttention(config, layer_idx)
        self.post_attention_layernorm = FLMLayerNorm(config)
        self.mlp = FLMMLP(config)
        gates = config.layer_gates
        self.gate = None if gates is None or float(gates[layer_idx]) == 1.0 else float(gates[layer_idx])

    def forward(self, h, tables, cache, mask, causal):
        x = h + (self.self_attn(self.input_layernorm(h), tables, cache, mask, causal) + self.self_attn.o_proj.bias)
        out = x + (self.mlp(self.post_attention_layernorm(x)) + self.mlp.fc2.bias)
        if self.gate is not None:  # a layer added by MSG depth growth, still ramping in
            out = self.gate * out + (1.0 - self.gate) * h
        return out


class FLMPreTrainedModel(PreTrainedModel):
    config: FLMConfig
    config_class = FLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["FLMDecoderLayer"]
    _supports_sdpa = True
    _supports_cache_class = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class FLMModel(FLMPreTrainedModel):
    def __init__(self, config: FLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([FLMDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = FLMLayerNorm(config)
        self._tables: tuple | None = None
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def _xpos(self, start: int, length: int, device, dtype):
        key = (start, length, device, dtype)
        if self._tables is None or self._tables[0] != key:
            c = self.config
            scale_base = c.xpos_scale_base if c.position_embedding_type == "xpos" else None
            tabs = xpos_tables(torch.arange(start, start + length), c.head_dim, float(c.rope_theta),
                               None if scale_base is None else float(scale_base), float(c.xpos_center))
            self._tables = (key, tuple(t.to(device=device, dtype=dtype) for t in tabs))
        return self._tables[1]

    @staticmethod
    def _mask(attention_mask, past: int, length: int, device):
        """None (plain causal) or a boolean [b, 1, s, past + s] mask: causal, pads hidden."""
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and (past == 0 or length == 1):
            return None
        total = past + length
        rows = torch.arange(past, total, device=device)[:, None]
        allowed = (torch.arange(total, device=device)[None, :] <= rows)[None, None]
        if padded:
            keys = attention_mask[:, -total:].to(device=device, dtype=torch.bool)[:, None, None, :]
            allowed = allowed & keys
            allowed = allowed | (torch.arange(total, device=device)[None, :] == rows)[None, None]  # no empty rows
        return allowed

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, cache=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.use_mup and self.config.input_mult != 1.0:
            h = h * self.config.input_mult
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        b, s, _ = h.shape
        tables = tuple(t[None, None] for t in self._xpos(past, s, h.device, h.dtype))
        mask = self._mask(attention_mask, past, s, h.device)
        for layer in self.layers:
            h = layer(h, tables, cache, mask, causal=s > 1)
        h = self.norm(h)
        return BaseModelOutputWithPast(last_hidden_state=h, **{_CACHE_FIELD: cache if use_cache else None})


class FLMForCausalLM(FLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: FLMConfig):
        super().__init__(config)
        self.model = FLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, cache=None, logits_to_keep=0, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, cache=cache)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        c = self.config
        if c.use_mup and c.output_mult / c.mup_scale_factor != 1.0:
            h = h * (c.output_mult / c.mup_scale_factor)  # µP logits scale (on the final norm's output)
        logits = torch.matmul(h, self.lm_head.weight.t())
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: getattr(out, _CACHE_FIELD)})
