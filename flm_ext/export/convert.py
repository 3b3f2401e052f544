"""Checkpoint <-> transformers tensors: the key map, growth-mask folding and the config.

Used by the export (flm_ext/export/export.py, streaming to safetensors), the in-memory loader
(flm_ext/export/generation.py `load_hf_model`) and the import (flm_ext/export/importer.py).

Each HF tensor is produced on its own from global slices of the checkpoint (row blocks of one
layer of one stacked tensor at a time, read with flm_ext.checkpoint's reader at any saved TP/PP),
so peak memory is one block (at most 512 MiB by default) plus the stored chunk it is cut from,
not the model or its largest tensor.

Growth ramps: a checkpoint saved while MSG masks ramp (flm_ext/growth/masks.py) is exported as the
function it computes at its iteration. The mask rules are flm_ext/growth/rules.py's, the ones the
trainer's hooks follow: each scaling mask is folded into the tensors its site lists (`Folding`;
e.g. the hidden mask into the embedding's columns, LayerNorm gains and biases, and the rows of the
attention output and FC2 projections), and what is not a weight scaling stays a config field:
mask-weighted LayerNorm statistics (`growth_norm_mask`) and new layers' gates (`layer_gates`). Such an export cannot be imported back
(the masks cannot be unfolded); train past the ramp for a round-trippable model.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Callable, Iterator

import torch

from flm_ext.config import FLMConfig
from flm_ext.export.errors import ExportError
from flm_ext.growth.operators import GrowthError
from flm_ext.growth.rules import EMBEDDING, OUTPUT, axis_rule, fold_table, mask_values
from flm_ext.growth.state import GrowthState

# megatron checkpoint key -> HF name ({i}: layer index). Layer keys are stacked [L, ...].
LAYER_KEYS = {
    "decoder.layers.input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "decoder.layers.input_layernorm.bias": "model.layers.{i}.input_layernorm.bias",
    "decoder.layers.self_attention.linear_qkv.weight": "model.layers.{i}.self_attn.qkv_proj.weight",
    "decoder.layers.self_attention.linear_qkv.bias": "model.layers.{i}.self_attn.qkv_proj.bias",
    "decoder.layers.self_attention.linear_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "decoder.layers.self_attention.linear_proj.bias": "model.layers.{i}.self_attn.o_proj.bias",
    "decoder.layers.pre_mlp_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "decoder.layers.pre_mlp_layernorm.bias": "model.layers.{i}.post_attention_layernorm.bias",
    "decoder.layers.mlp.linear_fc1.weight": "model.layers.{i}.mlp.fc1.weight",
    "decoder.layers.mlp.linear_fc1.bias": "model.layers.{i}.mlp.fc1.bias",
    "decoder.layers.mlp.linear_fc2.weight": "model.layers.{i}.mlp.fc2.weight",
    "decoder.layers.mlp.linear_fc2.bias": "model.layers.{i}.mlp.fc2.bias",
}
OTHER_KEYS = {
    EMBEDDING: "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "decoder.final_layernorm.bias": "model.norm.bias",
    OUTPUT: "lm_head.weight",
}
VOCAB_KEYS = (EMBEDDING, OUTPUT)


def hf_config(cfg: FLMConfig, vocab_size: int, eos_token_id: int, dtype: torch.dtype, iteration: int,
              growth: GrowthState | None = None, lam: float = 1.0) -> dict:
    """config.json of the export (see configuration_flm.py for what each field means)."""
    norm_mask, gates = _config_masks(growth, lam)
    return {
        "architectures": ["FLMForCausalLM"], "model_type": "flm",
        "auto_map": {"AutoConfig": "configuration_flm.FLMConfig", "AutoModel": "modeling_flm.FLMModel",
                     "AutoModelForCausalLM": "modeling_flm.FLMForCausalLM"},
        "vocab_size": vocab_size, "padded_vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads, "head_dim": cfg.head_dim,
        "intermediate_size": cfg.ffn_hidden_size, "max_position_embeddings": cfg.seq_length,
        "layer_norm_eps": cfg.layernorm_epsilon, "hidden_act": "gelu_pytorch_tanh",
        "position_embedding_type": cfg.position_embedding, "rope_theta": float(cfg.rotary_base),
        "xpos_scale_base": float(cfg.xpos_scale_base), "xpos_center": cfg.seq_length / 2,
        "xpos_block": cfg.seq_length,
        "use_mup": cfg.use_mup, "input_mult": cfg.mup_input_mult, "output_mult": cfg.mup_output_mult,
        "mup_scale_factor": cfg.mup_width_mult,
        "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
        "growth_norm_mask": norm_mask,
        "layer_gates": gates,
        "blockwise_attention": False, "blockwise_block_size": None,  # inference option (docs/long_context.md)
        "tie_word_embeddings": cfg.share_embeddings_and_output_weights,
        "bos_token_id": eos_token_id, "eos_token_id": eos_token_id,
        "dtype": str(dtype).removeprefix("torch."), "use_cache": True,
        # The training side, for an import back into a checkpoint: the exact FLMConfig and iteration.
        "flm_training": {"model_config": asdict(cfg), "iteration": iteration,
                         "growth_lambda": lam if growth is not None else None},
    }


def _config_masks(growth: GrowthState | None, lam: float) -> tuple[list | None, list[float] | None]:
    """The mask sites that are not a weight scaling (rules.py), as config fields: the LayerNorms'
    mask-weighted statistics ([first new hidden dim, lambda]) and each layer's gate."""
    norm_mask = gates = None
    for change in growth.changes if growth is not None else ():
        rule = axis_rule(change.axis)
        if rule.has("norm"):
            if change.positions is not None or norm_mask is not None:
                raise ExportError(f"growth of {change.axis} does not fit growth_norm_mask (appended dims of one axis)")
            norm_mask = [change.old, lam]
        if rule.has("gate"):
            gates = mask_values(change.new_units(), lam).tolist()
    return norm_mask, gates


class Folding:
    """The growth masks at lambda, folded into the tensors they follow as rules.py lists them."""

    def __init__(self, growth: GrowthState | None, lam: float):
        changes = [] if growth is None else [c for c in growth.changes if axis_rule(c.axis).per_coordinate]
        self.masks = {c.axis: mask_values(c.is_new(), lam) for c in changes}
        self.table = fold_table(self.masks)

    def __call__(self, key: str, tensor: torch.Tensor, row: int = 0) -> torch.Tensor:
        """`tensor` (rows `row`.. of the whole tensor) with the growth mask that follows it multiplied
        in (unchanged without one).

        A folded tensor comes back in float64 (one rounding, when the caller casts it to its output
        dtype), so a float64 model built from it is exact: tests measure the fold, not rounding.
        """
        rule = self.table.get(key)
        if rule is None:
            return tensor
        axis, dim = rule
        shape = [1] * tensor.dim()
        shape[dim] = tensor.shape[dim]
        mask = self.masks[axis]
        if dim == 0:  # the mask runs along the rows: this block's part of it
            mask = mask[row:row + tensor.shape[0]]
        return tensor.to(torch.float64) * mask.reshape(shape)


# torch's checkpoint reader loads each stored chunk whole to cut a slice from it, so smaller blocks
# save little memory below the stored chunk size and re-read chunks: blocks only split tensors
# bigger than this (at 101B: the 3.9 GiB embedding, the 1.6 GiB FFN layers).
DEFAULT_BLOCK_BYTES = 512 * 2 ** 20
Blocks = Callable[[], Iterator[torch.Tensor]]


def plan_tensors(ckpt, vocab_size: int, block_bytes: int = DEFAULT_BLOCK_BYTES
                 ) -> Iterator[tuple[str, tuple[int, ...], Blocks]]:
    """(HF name, shape, blocks) for every exported tensor, in file order. `blocks()` reads the
    tensor from the checkpoint in row blocks of about `block_bytes` (folding growth masks in),
    so memory stays at one block whatever the tensor's size. `ckpt` is an open
    flm_ext.checkpoint Checkpoint."""
    cfg, reader = ckpt.config, ckpt.reader
    fold = Folding(*growth_of(ckpt))
    missing = [k for k in [EMBEDDING, *LAYER_KEYS, "decoder.final_layernorm.weight"] if k not in reader.tensors]
    if missing:
        raise ExportError(f"{ckpt.folder}: no tensor {missing[0]!r}; not an FLM model checkpoint")

    def blocks(key: str, shape: tuple[int, ...], layer: int | None) -> Blocks:
        row_bytes = reader.tensors[key].properties.dtype.itemsize * max(1, math.prod(shape[1:]))
        step = max(1, block_bytes // row_bytes)
        lead = () if layer is None else (layer,)

        def produce() -> Iterator[torch.Tensor]:
            for r in range(0, shape[0], step):
                n = min(step, shape[0] - r)
                offsets = lead + (r,) + (0,) * (len(shape) - 1)
                block = reader.read(key, offsets, (1,) * len(lead) + (n,) + tuple(shape[1:]))
                yield fold(key, block[0] if lead else block, r)
        return produce

    shape = (vocab_size, cfg.hidden_size)
    yield OTHER_KEYS[EMBEDDING], shape, blocks(EMBEDDING, shape, None)
    for i in range(cfg.num_layers):
        for key, name in LAYER_KEYS.items():
            layer_shape = tuple(reader.tensors[key].size[1:])
            yield name.format(i=i), layer_shape, blocks(key, layer_shape, i)
    for key in ("decoder.final_layernorm.weight", "decoder.final_layernorm.bias"):
        yield OTHER_KEYS[key], tuple(reader.tensors[key].size), blocks(key, tuple(reader.tensors[key].size), None)
    if not cfg.share_embeddings_and_output_weights:
        yield OTHER_KEYS[OUTPUT], shape, blocks(OUTPUT, shape, None)


def growth_of(ckpt) -> tuple[GrowthState | None, float]:
    """`GrowthState.at_checkpoint`, with a malformed growth record as an ExportError."""
    try:
        return GrowthState.at_checkpoint(ckpt)
    except GrowthError as e:
        raise ExportError(str(e)) from None
