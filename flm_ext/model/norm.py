"""FLM LayerNorm: pre-LN normalisation (eps 1e-5) that also works under sequence parallelism.

megatron-core's local-spec torch LayerNorm refuses sequence parallelism; this one does not need
to: the statistics are over the hidden dim, which is never split. Its weight and bias carry
`sequence_parallel=True` under SP so that megatron's `finalize_model_grads` all-reduces their
gradients over the TP group (each TP rank saw only its slice of the sequence).

`output_scale` multiplies the output. The final norm uses it for the µP output multiplier
(logits x mup_output_mult / m): the output layer is linear and bias-free, so scaling its input
scales the logits exactly, without touching GPTModel's output path or its tied weight.
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
        device = None if config.use_cpu_initialization else torch.cuda.current_device()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype, device=device))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype, device=device))
        for param in (self.weight, self.bias):
            setattr(param, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)
        return out * self.output_scale if self.output_scale != 1.0 else out

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, output_scale={self.output_scale}"
