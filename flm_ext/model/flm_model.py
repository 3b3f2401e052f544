"""The FLM model: megatron-core's GPTModel with the FLM layer spec.

Read top to bottom: `flm_layer_spec` says what one block is made of (megatron's TransformerLayer,
SelfAttention, MLP and parallel linears; FLM's LayerNorm and xPos/SDPA core attention),
`flm_block_spec` adds the final norm (which carries the µP output multiplier), and `FLMModel`
builds GPTModel with tied embeddings, no learned position table (xPos is relative) and the µP
input multiplier. Parallelism (TP, SP, PP, virtual PP) is GPTModel's own.
"""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import (TransformerLayer, TransformerLayerSubmodules,
                                                          get_transformer_layer_offset)

from flm_ext.config import FLMConfig, ParallelConfig, to_transformer_config
from flm_ext.model.attention import FLMCoreAttention
from flm_ext.model.norm import FLMLayerNorm


class FLMTransformerLayer(TransformerLayer):
    """megatron's TransformerLayer, initialised from its own seed: (init_seed, global layer number).

    With CPU initialisation megatron draws each whole weight and slices this rank's part, so TP
    does not change the weights; reseeding per layer makes PP not change them either (a later
    stage never sees the draws of earlier layers). So one seed gives one model at any layout,
    which is what makes loss curves comparable across layouts.
    """

    def __init__(self, config: TransformerConfig, submodules, layer_number: int = 1, *args,
                 init_seed: Optional[int] = None, **kwargs):
        if init_seed is None or not config.use_cpu_initialization:
            super().__init__(config, submodules, layer_number, *args, **kwargs)
            return
        from megatron.core import parallel_state

        # `layer_number` is local to this pipeline stage; megatron adds the stage's offset.
        global_number = layer_number + get_transformer_layer_offset(
            config, kwargs.get("vp_stage"), parallel_state.get_pipeline_model_parallel_rank())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed + 7919 * global_number)
            super().__init__(config, submodules, layer_number, *args, **kwargs)


def flm_layer_spec(model: FLMConfig, init_seed: Optional[int] = None) -> ModuleSpec:
    """One FLM block: x + Attn(LN(x)), then x + MLP(LN(x)); biases everywhere, GeLU(tanh) MLP."""
    core_attention = ModuleSpec(
        module=FLMCoreAttention,
        params=dict(position_embedding=model.position_embedding, rotary_base=float(model.rotary_base),
                    xpos_scale_base=float(model.xpos_scale_base), xpos_center=model.seq_length / 2,
                    xpos_block=model.seq_length,
                    scale_by_inverse_layer=model.scale_attn_by_inverse_layer_idx),
    )
    return ModuleSpec(
        module=FLMTransformerLayer,
        params={"init_seed": init_seed},
        submodules=TransformerLayerSubmodules(
            input_layernorm=FLMLayerNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=core_attention,
                    linear_proj=RowParallelLinear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=FLMLayerNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                                linear_fc2=RowParallelLinear)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def flm_block_spec(model: FLMConfig, config: TransformerConfig, vp_stage: Optional[int] = None,
                   init_seed: Optional[int] = None) -> TransformerBlockSubmodules:
    """This pipeline stage's layers plus the final LayerNorm with the µP output multiplier."""
    layer = flm_layer_spec(model, init_seed)
    output_scale = model.mup_output_mult / model.mup_width_mult if model.use_mup else 1.0
    return TransformerBlockSubmodules(
        layer_specs=[layer] * get_num_layers_to_build(config, vp_stage=vp_stage),
        layer_norm=ModuleSpec(module=FLMLayerNorm, params={"output_scale": output_scale}),
    )


class FLMModel(GPTModel):
    """GPTModel configured as FLM. `forward(input_ids, position_ids, attention_mask, labels=...)`
    returns per-token losses [b, s] when labels are given, else vocab-parallel logits [b, s, v/tp].
    """

    def __init__(self, model: FLMConfig, config: TransformerConfig, *, pre_process: bool = True,
                 post_process: bool = True, vp_stage: Optional[int] = None, init_seed: Optional[int] = None):
        super().__init__(
            config=config,
            transformer_layer_spec=flm_block_spec(model, config, vp_stage, init_seed),
            vocab_size=model.vocab_size,
            max_sequence_length=model.seq_length,
            pre_process=pre_process,
            post_process=post_process,
            parallel_output=True,
            share_embeddings_and_output_weights=model.share_embeddings_and_output_weights,
            position_embedding_type="none",
            vp_stage=vp_stage,
        )
        self.flm_config = model
        if pre_process and model.use_mup and model.mup_input_mult != 1.0:
            mult = model.mup_input_mult
            self.embedding.register_forward_hook(lambda _module, _inputs, output: output * mult)


def build_model_chunks(model: FLMConfig, parallel: ParallelConfig | None = None, *,
                       params_dtype: torch.dtype = torch.float32, **transformer_overrides) -> list[FLMModel]:
    """This rank's model chunks (one per virtual pipeline stage), unwrapped, on this rank's device.

    Needs megatron's parallel state (see `flm_ext.runtime.initialize_distributed`).
    """
    from megatron.core import parallel_state

    parallel = parallel or ParallelConfig()
    config = to_transformer_config(model, parallel, params_dtype=params_dtype, **transformer_overrides)
    vpp = parallel.virtual_pipeline_model_parallel_size or 1
    init_seed = torch.initial_seed() % 2**31  # set by runtime.set_seed, equal on all ranks
    chunks = []
    for stage in range(vpp):
        vp_stage = stage if vpp > 1 else None
        chunk = FLMModel(
            model, config,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
            vp_stage=vp_stage,
            init_seed=init_seed,
        )
        chunks.append(chunk)
    if torch.cuda.is_available():
        for chunk in chunks:
            chunk.cuda(torch.cuda.current_device())
    return chunks


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The model inside megatron's DDP wrapper(s) (or the chunk itself): the one place that knows it."""
    while isinstance(getattr(chunk, "module", None), torch.nn.Module):
        chunk = chunk.module
    return chunk
