"""FLM core attention: xPos (or RoPE) on q and k, then torch's scaled_dot_product_attention.

Plugs into megatron-core's `SelfAttention` as its `core_attention` submodule, so the QKV and
output projections, tensor parallelism and sequence parallelism stay megatron's. Positions are
applied here rather than through GPTModel's rotary path because xPos scales q and k differently
(megatron's rotary applies one table to both). SDPA picks flash / cuDNN / memory-efficient
kernels on GPU and a fused math kernel on CPU; the softmax accumulates in fp32 in all of them.
Past one block of `xpos_block` positions (the training length) the xPos decay is taken relative to
each block (model/xpos.py) and attention runs through `xpos_blocks.block_attention` instead.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide

from flm_ext.model import fused
from flm_ext.model.blockwise import blockwise_mask, blockwise_sdpa
from flm_ext.model.xpos_blocks import block_attention
from flm_ext.model.xpos import XPosEmbedding


class FLMCoreAttention(MegatronModule):
    """Causal self-attention on [s, b, heads, d] tensors of this TP rank's heads."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: Optional[float] = None,
                 softmax_scale: Optional[float] = None, cp_comm_type: Optional[str] = None,
                 pg_collection=None, *, position_embedding: str = "xpos", rotary_base: float = 10000.0,
                 xpos_scale_base: float = 512.0, xpos_center: float = 0.0, xpos_impl: Optional[str] = None,
                 xpos_block: Optional[int] = None, scale_by_inverse_layer: bool = False):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("FLMCoreAttention does not support context parallelism")
        self.layer_number = layer_number
        self.attn_mask_type = attn_mask_type
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else head_dim ** -0.5
        if scale_by_inverse_layer:  # the released config's scale_attn_by_inverse_layer_idx (global 1-based layer)
            self.softmax_scale /= layer_number
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        tp = config.tensor_model_parallel_size
        self.num_heads_per_partition = divide(config.num_attention_heads, tp)
        self.num_groups_per_partition = divide(config.num_query_groups or config.num_attention_heads, tp)
        self.positions = XPosEmbedding(head_dim, base=rotary_base,
                                       scale_base=xpos_scale_base if position_embedding == "xpos" else None,
                                       center=xpos_center, block=xpos_block)
        # None: FLM_XPOS_IMPL or the device's default (the fused kernel on CUDA, the reference on CPU).
        self.xpos_impl = xpos_impl
        # Blockwise causal attention at inference (model/blockwise.py): the block length, or None (off).
        self.blockwise_block: Optional[int] = None

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], attn_mask_type: Optional[AttnMaskType] = None,
                attention_bias=None, packed_seq_params=None) -> torch.Tensor:
        """query/key/value: [s, b, heads, d] -> context [s, b, heads * d]."""
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("FLMCoreAttention supports neither packed sequences nor attention bias")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        # xPos on q and k; both come back as [b, h, s, d], as SDPA expects (see model/fused.py).
        impl = fused.resolve_xpos_impl(self.xpos_impl, query.device)
        q, k = fused.apply_xpos_qk(query, key, self.positions, impl=impl)
        v = value.permute(1, 2, 0, 3)
        causal = mask_type == AttnMaskType.causal
        mask = None
        if not causal and attention_mask is not None:
            mask = ~attention_mask  # megatron masks mark positions to hide with True
        dropout_p = self.dropout_p if self.training else 0.0
        gqa = self.num_groups_per_partition != self.num_heads_per_partition
        bca = self.blockwise_block if causal else None
        if self.positions.needs_blocks(k.shape[2]):
            # Keys span several xPos blocks (model/xpos_blocks.py); BCA's window goes in as its rule.
            if bca is not None:
                allowed = lambda qp, kp: blockwise_mask(qp, kp, bca)  # noqa: E731
            else:
                allowed = None if causal or attention_mask is None else ~attention_mask
            with contextlib.ExitStack() as stack:
                if dropout_p > 0.0:
                    stack.enter_context(tensor_parallel.get_cuda_rng_tracker().fork())
                decay = self.positions.block_decay(-(-k.shape[2] // self.positions.block), q.device,
                                                   torch.promote_types(q.dtype, torch.float32))
                context = block_attention(q, k, v, start=0, block=self.positions.block, decay=decay,
                                          scale=self.softmax_scale, dropout_p=dropout_p, allowed=allowed)
        elif bca is not None:
            with fused.sdpa_backends(q.device):
                context = blockwise_sdpa(q, k, v, self.blockwise_block, scale=self.softmax_scale,
                                         enable_gqa=gqa)
        elif dropout_p > 0.0:
            # Heads differ per TP rank: draw dropout from the TP-specific stream (as megatron does).
            with tensor_parallel.get_cuda_rng_tracker().fork(), fused.sdpa_backends(q.device):
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                         is_causal=causal, scale=self.softmax_scale,
                                                         enable_gqa=gqa)
        else:
            with fused.sdpa_backends(q.device):
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                         scale=self.softmax_scale, enable_gqa=gqa)
        # [b, h, s, d] -> [s, b, h * d]
        b, h, s, d = context.shape
        return context.permute(2, 0, 1, 3).reshape(s, b, h * d)
