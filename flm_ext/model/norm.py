"""FLM LayerNorm: pre-LN normalisation (eps 1e-5) that also works under sequence parallelism.

megatron-core's local-spec torch LayerNorm refuses sequence parallelism; this one does not need
to: the statistics are over the hidden dim, which is never split. Its weight and bias carry
`sequence_parallel=True` under SP so that megatron's `finalize_model_grads` all-reduces their
gradients over the TP group (each TP rank saw only its slice of the sequence).

`output_scale` multiplies the output. The final norm uses it for the µP output multiplier
(logits x mup_output_mult / m): the output layer is linear and bias-free, so scaling its input
scales the logits exactly, without touching GPTModel's output path or its tied weight.

`growth_mask` (None except while an MSG growth ramps, see flm_ext/growth/masks.py) switches to
MSG's mask-weighted LayerNorm: with c the mask over hidden dims (1 on old dims, lambda on new),
mu = sum c x / sum c, var = sum c (x - mu)^2 / sum c, and the output is multiplied by c. At
lambda = 0 this is exactly the pre-growth LayerNorm on the old dims and zero on the new ones.
Without a mask the forward is the plain fused `F.layer_norm`, so a model that is not growing pays
nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


class FLMLayerNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5,
                 output_scale: float = 1.0):
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.eps = eps
        self.output_scale = output_scale
        self.growth_mask: torch.Tensor | None = None  # [hidden], set by flm_ext.growth.masks; not state
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype, device=device))
        for param in (self.weight, self.bias):
            setattr(param, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.growth_mask is None:
            out = F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)
        else:
            out = masked_layer_norm(x, self.growth_mask, self.weight, self.bias, self.eps)
        return out * self.output_scale if self.output_scale != 1.0 else out

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, output_scale={self.output_scale}"


def masked_layer_norm(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      eps: float) -> torch.Tensor:
    """MSG's mask-weighted LayerNorm over the last dim, output multiplied by the mask (statistics in
    fp32, or in fp64 for fp64 input: never below the input's precision)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    xf, c = x.to(dtype), mask.to(dtype)
    total = c.sum()
    mu = (xf * c).sum(-1, keepdim=True) / total
    centred = xf - mu
    var = (centred * centred * c).sum(-1, keepdim=True) / total
    out = centred * torch.rsqrt(var + eps) * weight.to(dtype) + bias.to(dtype)
    return (out * c).to(x.dtype)
