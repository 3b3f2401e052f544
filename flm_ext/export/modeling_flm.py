"""transformers model of an exported FLM checkpoint: `FLMForCausalLM` (and the bare `FLMModel`).

Standalone (imports only torch, transformers and `configuration_flm` next to it), so an exported
folder loads with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`.

It computes what the training model computes (docs/FLM.md, section 1): pre-LN blocks, biases on
every linear, GeLU(tanh) MLP, tied embeddings, xPos on q and k; fp32 logits agree with the
trainer's to ~1e-6. It follows transformers' attention interface so that serving engines (vLLM's
and SGLang's Transformers backends) can run it: attention goes through `ALL_ATTENTION_FUNCTIONS`
with the scale passed explicitly (µP uses 1/head_dim), extra keyword arguments flow from the model
down to the attention function, linear layers are called as modules (an engine swaps in its own
parallel ones), q/k/v are viewed per head from the local width (so a column-sharded `qkv_proj`
holds whole heads) and `base_model_tp_plan` says how to shard. Layout and position notes:

- `qkv_proj` keeps the training layout: rows grouped per head, [q_h, k_h, v_h] for head h.
- xPos (`xpos_tables`) uses rotate-half pairs (x[i], x[i + d/2]); the query at position n is
  rotated by n * theta_i and scaled by zeta_i^((n - c)/scale_base), the key at m by m * theta_i and
  zeta_i^(-(m - c)/scale_base), with c = `xpos_center`. Positions come from `position_ids` (default:
  cache offset + 0..s-1), so packed sequences (positions restarting at 0) and engines that pass no
  cache work. c is fixed, so keys are cached after xPos and stay valid.
- Scores depend only on n - m, so the offset a left pad adds to positions changes nothing.
- The attention mask is built in one place (`attention_mask_for`): causal, pads hidden, packed
  sequences kept apart, and with `blockwise_attention` the xPos paper's blockwise causal attention.
- Long positions: the decay's reference moves with the position, r_j = c + j * W for block
  j = p // W (W = `xpos_block`, the training length), so no factor leaves
  [zeta_0^(W/2/sb), zeta_0^(-W/2/sb)] at any position (one fixed c overflows fp16 past ~4.5k
  positions, bf16 past ~36k). While every position is below W nothing changes. Past it attention
  goes through `xpos_block_attention`: a query in block i meets keys of block j with the extra
  factor zeta^((i - j) W / sb) <= 1, put on the query, so cached keys are still decayed once and
  never rescaled (docs/long_context.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_flm import FLMConfig

# transformers renamed the cache field of model outputs (past_key_values -> cache); use what it has.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def xpos_tables(positions: torch.Tensor, head_dim: int, base: float, scale_base: float | None, center: float,
                block: int | None = None):
    """(cos_q, sin_q, cos_k, sin_k), each positions.shape + [head_dim], in float64 (scale_base None: RoPE);
    with `block`, each position's decay is relative to c + block * (position // block)."""
    pos = positions.to(torch.float64)
    if block is not None:
        center = center + block * torch.div(positions, block, rounding_mode="floor").to(torch.float64)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=pos.device) / head_dim)
    angles = pos[..., None] * inv_freq
    cos, sin = torch.cos(angles), torch.sin(angles)
    if scale_base is None:
        q_scale = k_scale = torch.ones_like(angles)
    else:
        i = torch.arange(0, head_dim // 2, dtype=torch.float64, device=pos.device)
        zeta = (2 * i / head_dim + 0.4) / 1.4
        q_scale = zeta ** ((pos - center) / scale_base)[..., None]
        k_scale = 1.0 / q_scale
    return tuple(torch.cat([t, t], dim=-1) for t in (cos * q_scale, sin * q_scale, cos * k_scale, sin * k_scale))


def xpos_block_decay(head_dim: int, block: int, scale_base: float, num_blocks: int) -> torch.Tensor:
    """[num_blocks, head_dim] float64: zeta_i^(delta * block / scale_base) for block distances delta."""
    i = torch.arange(0, head_dim // 2, dtype=torch.float64)
    zeta = (2 * i / head_dim + 0.4) / 1.4
    half = zeta[None, :] ** (torch.arange(num_blocks, dtype=torch.float64)[:, None] * (block / scale_base))
    return torch.cat([half, half], dim=-1)


def xpos_block_attention(q, k, v, *, start: int, key_start: int, block: int, decay: torch.Tensor, scale: float,
                         rule=None, chunk_elements: int = 1 << 25) -> torch.Tensor:
    """Causal attention of queries at positions start .. start+s-1 over keys at key_start .. key_start+L-1
    ([b, h, *, d], block-referenced xPos applied): key block j's scores carry the query's factor times
    decay[i - j]; keys stay as cached. `rule(query positions, key positions)`: an extra boolean mask
    ([c, l] or [b, 1, c, l]). Scores in fp32 on CPU (the inputs' dtype on GPU), softmax in fp32,
    queries in chunks. Returns [b, h, s, d]."""
    b, h, s, d = q.shape
    length, out_dtype = k.shape[2], v.dtype
    if q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16):
        q, k, v = q.float(), k.float(), v.float()
    front = key_start % block  # keys padded in front so that blocks start at multiples of `block`
    first = (key_start - front) // block
    blocks = -(-(front + length) // block)
    keys = F.pad(k, (0, 0, front, blocks * block - length - front)).view(b, h, blocks, block, d)
    key_pos = torch.arange(key_start - front, key_start - front + blocks * block, device=q.device)
    key_block = first + torch.arange(blocks, device=q.device)
    decay = decay.to(q.device)
    chunk = max(1, chunk_elements // max(1, b * h * blocks * block))
    out = []
    for c0 in range(0, s, chunk):
        q_pos = torch.arange(start + c0, start + min(s, c0 + chunk), device=q.device)
        seen = min(blocks, int(q_pos[-1]) // block - first + 1)  # key blocks this chunk may see (causal)
        delta = torch.div(q_pos, block, rounding_mode="floor")[:, None] - key_block[None, :seen]
        factor = decay[delta.clamp(min=0, max=len(decay) - 1)] * scale * (delta >= 0)[..., None]
        qx = q[:, :, c0:c0 + len(q_pos), None, :] * factor.to(q.dtype)
        scores = torch.einsum("bhcjd,bhjwd->bhcjw", qx, keys[:, :, :seen]).reshape(b, h, len(q_pos), -1)
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        kp = key_pos[:seen * block]
        mask = (kp[None, :] <= q_pos[:, None]) & (kp >= key_start)[None, :]
        if rule is not None:
            mask = mask & rule(q_pos, kp)
        probs = scores.masked_fill_(~mask, float("-inf")).softmax(-1)
        vals = F.pad(v, (0, 0, front, blocks * block - length - front))[:, :, :seen * block]
        out.append(probs.to(v.dtype) @ vals)
    return torch.cat(out, dim=2).to(out_dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


# Attention implementations that take the boolean [b, 1, q, kv] mask built here.
_MASKED_IMPLEMENTATIONS = ("eager", "sdpa")


def attention_mask_for(implementation: str, padding_mask: torch.Tensor | None, positions: torch.Tensor | None,
                       past: int, length: int, device, block: int | None = None) -> torch.Tensor | None:
    """The mask `implementation` takes, for `length` new tokens after `past` cached ones.

    eager / sdpa: None when plain causal attention is meant (sdpa then uses is_causal), else a boolean
    [b, 1, length, past + length] mask (True: attend): causal, keys where `padding_mask` (the 2D
    mask, 0 on pads) is 0 hidden, and, without padding or cache, packed sequences (`positions`
    restarting) kept apart. Other implementations (flash attention, engines' own) get the 2D padding
    mask as it is: they read pads and packing from it and from position_ids themselves.

    `block` (config `blockwise_attention`): blockwise causal attention, key j visible to query i iff
    j <= i and j // block >= i // block - 1 (cache offsets; it hides nothing until the third block).
    """
    total = past + length
    blockwise = block is not None and total > 2 * block
    if implementation not in _MASKED_IMPLEMENTATIONS:
        if blockwise:
            raise ValueError(f"blockwise_attention needs attn_implementation 'sdpa' or 'eager', not {implementation!r}")
        return padding_mask
    padded = padding_mask is not None and not bool(padding_mask.all())
    segments = None
    if positions is not None and not padded and past == 0 and length > 1:
        starts = torch.diff(positions, prepend=positions[:, :1] - 1, dim=-1) != 1
        segments = starts.cumsum(-1) if bool(starts[:, 1:].any()) else None
    if not padded and segments is None and not blockwise and (length == 1 or (past == 0 and implementation != "eager")):
        return None
    rows = torch.arange(past, total, device=device)[:, None]
    cols = torch.arange(total, device=device)[None, :]
    allowed = cols <= rows
    if blockwise:
        allowed = allowed & (torch.div(cols, block, rounding_mode="floor") >= torch.div(rows, block, rounding_mode="floor") - 1)
    allowed = allowed[None, None]
    if segments is not None:
        segments = segments.to(device)
        allowed = allowed & (segments[:, None, :, None] == segments[:, None, None, :])
    if padded:
        keys = padding_mask[:, -total:].to(device=device, dtype=torch.bool)[:, None, None, :]
        allowed = (allowed & keys) | (cols == rows)[None, None]  # a pad query still sees itself: no empty rows
    return allowed


def eager_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """Plain softmax attention over [b, h, s, d] tensors with a boolean mask (True: attend); returns
    ([b, s, h, d] output, weights) as transformers' attention functions do."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


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
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = 1
        self.is_causal = True
        width = config.num_attention_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * width)
        self.o_proj = nn.Linear(width, config.hidden_size)
        self.scaling = 1.0 / self.head_dim if config.use_mup else self.head_dim ** -0.5
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):  # the released config's flag (GPT-2's meaning)
            self.scaling /= layer_idx + 1

    def forward(self, hidden_states, tables, attention_mask=None, cache=None, **kwargs):
        b, s, _ = hidden_states.shape
        # -1 heads: the local ones when an engine shards qkv_proj column-wise (whole heads per rank).
        qkv = self.qkv_proj(hidden_states).view(b, s, -1, 3 * self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.split(self.head_dim, dim=-1))  # [b, h, s, d]
        cos_q, sin_q, cos_k, sin_k, blocks = tables
        q = q * cos_q + rotate_half(q) * sin_q
        k = k * cos_k + rotate_half(k) * sin_k
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if blocks is not None:  # positions past one xPos block (FLMModel._xpos_blocks)
            context = torch.cat([
                xpos_block_attention(q[rows], k[rows], v[rows], scale=self.scaling, **call)
                for rows, call in blocks], dim=0)
            return self.o_proj(context[torch.argsort(torch.cat([rows for rows, _ in blocks]))]
                               .transpose(1, 2).reshape(b, s, -1).contiguous())
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        context, _ = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling,
                            is_causal=self.is_causal, **kwargs)
        return self.o_proj(context.reshape(b, s, -1).contiguous())


class FLMMLP(nn.Module):
    def __init__(self, config: FLMConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class FLMDecoderLayer(nn.Module):
    def __init__(self, config: FLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = FLMLayerNorm(config)
        self.self_attn = FLMAttention(config, layer_idx)
        self.post_attention_layernorm = FLMLayerNorm(config)
        self.mlp = FLMMLP(config)
        gates = config.layer_gates
        self.gate = None if gates is None or float(gates[layer_idx]) == 1.0 else float(gates[layer_idx])

    def forward(self, h, tables, attention_mask=None, cache=None, **kwargs):
        x = h + self.self_attn(self.input_layernorm(h), tables, attention_mask, cache, **kwargs)
        out = x + self.mlp(self.post_attention_layernorm(x))
        if self.gate is not None:  # a layer added by MSG depth growth, still ramping in
            out = self.gate * out + (1.0 - self.gate) * h
        return out


class FLMPreTrainedModel(PreTrainedModel):
    config: FLMConfig
    config_class = FLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["FLMDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _supports_attention_backend = True
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
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def _xpos(self, positions: torch.Tensor, dtype: torch.dtype):
        """xPos tables for [b, s] positions, as [b, 1, s, head_dim] in the model's dtype."""
        c = self.config
        scale_base = float(c.xpos_scale_base) if c.position_embedding_type == "xpos" else None
        tables = xpos_tables(positions, c.head_dim, float(c.rope_theta), scale_base, float(c.xpos_center),
                             self._xpos_block())
        return tuple(t[:, None].to(dtype) for t in tables)

    def _xpos_block(self) -> int | None:
        """The xPos block length W, or None: plain RoPE, or an attention implementation other than ours
        (flash attention, a serving engine's), which cannot apply the cross-block factor: those keep
        one fixed centre (exact until a factor overflows: ~36k positions from it in bf16, ~4.5k in fp16)."""
        c = self.config
        if c.position_embedding_type != "xpos" or c._attn_implementation not in _MASKED_IMPLEMENTATIONS:
            return None
        return c.xpos_block

    def _xpos_blocks(self, positions: torch.Tensor, padding_mask, past: int, dtype):
        """None while every position is inside the first xPos block (attention as usual), else per group of
        rows the keyword arguments of `xpos_block_attention`: rows whose positions run past .. past+s-1
        minus a per-row offset (left pads before them), with pads hidden and blockwise causal attention's
        window (by cache offsets, as `attention_mask_for`) as the extra rule."""
        c = self.config
        if self._xpos_block() is None or int(positions.max()) < c.xpos_block:
            return None
        b, s = positions.shape
        index = torch.arange(past, past + s, device=positions.device)
        offsets = index[-1] - positions[:, -1]  # per row: cache index - position
        real = None if padding_mask is None else padding_mask[:, -(past + s):].to(torch.bool)
        for r in range(b):
            ok = positions[r] == index - offsets[r]
            if real is not None:
                ok = ok | ~real[r, -s:]
            if not bool(ok.all()):
                raise ValueError("position_ids past xpos_block must run consecutively per row (packed sequences "
                                 "longer than the training length are not supported)")
        decay = xpos_block_decay(c.head_dim, c.xpos_block, float(c.xpos_scale_base),
                                 int(positions.max()) // c.xpos_block + 2).to(torch.promote_types(dtype, torch.float32))
        bca = self._block()
        groups = []
        for off in sorted(set(offsets.tolist())):
            rows = (offsets == off).nonzero()[:, 0]

            def rule(qp, kp, rows=rows, off=off):  # positions -> cache indices: + off
                qi, ki = qp + off, kp + off
                ok = torch.ones(len(qp), len(kp), dtype=torch.bool, device=qp.device)
                if bca is not None:
                    ok = torch.div(ki, bca, rounding_mode="floor")[None, :] >= torch.div(qi, bca, rounding_mode="floor")[:, None] - 1
                if real is None:
                    return ok
                keys = real[rows][:, ki.clamp(min=0, max=real.shape[1] - 1)] & (ki >= 0)
                return ((ok[None] & keys[:, None, :]) | (ki[None, :] == qi[:, None])[None])[:, None]

            groups.append((rows, dict(start=past - off, key_start=-off, block=c.xpos_block, decay=decay,
                                      rule=rule)))
        return groups

    def _block(self) -> int | None:
        """The blockwise causal attention block length (configuration_flm), or None when off."""
        c = self.config
        if not getattr(c, "blockwise_attention", False):
            return None
        return getattr(c, "blockwise_block_size", None) or max(1, c.max_position_embeddings // 2)

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
        given = position_ids is not None
        if not given:
            position_ids = torch.arange(past, past + s, device=h.device)[None]
        elif position_ids.dim() == 1:
            position_ids = position_ids[None]
        position_ids = position_ids.expand(b, -1)
        blocks = self._xpos_blocks(position_ids, attention_mask, past, h.dtype)
        tables = self._xpos(position_ids, h.dtype) + (blocks,)
        mask = None if blocks is not None else attention_mask_for(
            self.config._attn_implementation, attention_mask, position_ids if given else None, past, s, h.device,
            self._block())
        for layer in self.layers:
            h = layer(h, tables, mask, cache if use_cache else None, position_ids=position_ids, **kwargs)
        h = self.norm(h)
        return BaseModelOutputWithPast(last_hidden_state=h, **{_CACHE_FIELD: cache if use_cache else None})


class FLMForCausalLM(FLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

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
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         cache=cache, **kwargs)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        if self.config.logit_scale != 1.0:
            h = h * self.config.logit_scale  # µP output multiplier (on the final norm's output, as in training)
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: getattr(out, _CACHE_FIELD)})
