"""transformers configuration of an exported FLM model (`model_type` "flm").

Standalone: plain transformers, no import of the training code, so an exported folder works
with `AutoConfig.from_pretrained(folder, trust_remote_code=True)` on a machine without it.

Every number the forward pass needs is a field; nothing is implied by the model's name:

- shape: `num_hidden_layers`, `hidden_size`, `num_attention_heads`, `head_dim` (heads x head_dim
  may differ from hidden_size), `intermediate_size`, `vocab_size` (the tokenizer's true vocabulary:
  padding rows of the training embedding are dropped) and `padded_vocab_size` (the training
  embedding's rows, kept so that an import restores the training shape);
- `layer_norm_eps`, `hidden_act` ("gelu_pytorch_tanh"), `tie_word_embeddings`;
- positions: `position_embedding_type` ("xpos" or "rope"), `rope_theta`, `xpos_scale_base` and
  `xpos_center` (a fixed offset, half the training sequence length: it cancels in q.k, and being
  fixed it keeps cached keys valid under incremental decoding); `xpos_block` (default
  `max_position_embeddings`): past it the decay's reference moves on by one block per block, so the
  factors stay in range at any length (modeling_flm.py, `xpos_block_attention`);
- µP (as fields, not folded into weights, so export and import are exact inverses): with
  `use_mup`, the embedding output is multiplied by `input_mult`, the logits by
  `output_mult / mup_scale_factor` and attention scores use 1/head_dim instead of 1/sqrt(head_dim);
- `scale_attn_by_inverse_layer_idx` (the released FLM-101B config's name, GPT-2's meaning): layer
  l's (0-based) attention scores are divided by l + 1 as well; off for models trained here unless
  they were trained with it;
- a checkpoint exported inside an MSG growth ramp: the masks of new coordinates are folded into
  the weights, but two parts of the masked function are not linear in the weights and are kept
  as fields: `growth_norm_mask` = [old hidden size, lambda] (every LayerNorm takes mask-weighted
  statistics over the hidden dims) and `layer_gates` (per layer: out = g * block(h) + (1 - g) * h).
  Both are None for an ordinary model.
- inference only: `blockwise_attention` (default false) switches on the xPos paper's blockwise
  causal attention: blocks of `blockwise_block_size` tokens (None: half of
  `max_position_embeddings`), each query attending causally within its block and to the whole
  previous block, so no query looks further back than the training length.

For serving engines: `logit_scale` (derived, not stored) is the µP output multiplier, the name
engines read when they build their own output layer; `base_model_tp_plan` shards `qkv_proj` and
`fc1` by rows (whole heads per rank: rows are grouped per head) and `o_proj` and `fc2` by columns.
"""
from __future__ import annotations

from transformers import PretrainedConfig


class FLMConfig(PretrainedConfig):
    model_type = "flm"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.qkv_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.fc1": "colwise",
        "layers.*.mlp.fc2": "rowwise",
    }

    def __init__(self, vocab_size: int = 100256, padded_vocab_size: int | None = None, hidden_size: int = 10240,
                 num_hidden_layers: int = 80, num_attention_heads: int = 80, head_dim: int | None = None,
                 intermediate_size: int | None = None, max_position_embeddings: int = 2048,
                 layer_norm_eps: float = 1e-5, hidden_act: str = "gelu_pytorch_tanh",
                 position_embedding_type: str = "xpos", rope_theta: float = 10000.0, xpos_scale_base: float = 512.0,
                 xpos_center: float | None = None, xpos_block: int | None = None, use_mup: bool = False, input_mult: float = 1.0,
                 output_mult: float = 1.0, mup_scale_factor: float = 1.0, scale_attn_by_inverse_layer_idx: bool = False,
                 growth_norm_mask: list | None = None, layer_gates: list | None = None,
                 blockwise_attention: bool = False, blockwise_block_size: int | None = None,
                 tie_word_embeddings: bool = True, use_cache: bool = True, initializer_range: float = 0.02,
                 bos_token_id: int | None = None, eos_token_id: int | None = None, pad_token_id: int | None = None,
                 **kwargs):
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size or vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size or 4 * hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.layer_norm_eps = layer_norm_eps
        self.hidden_act = hidden_act
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.xpos_scale_base = xpos_scale_base
        self.xpos_center = max_position_embeddings / 2 if xpos_center is None else xpos_center
        self.xpos_block = int(max_position_embeddings if xpos_block is None else xpos_block)
        self.use_mup = use_mup
        self.input_mult = input_mult
        self.output_mult = output_mult
        self.mup_scale_factor = mup_scale_factor
        self.scale_attn_by_inverse_layer_idx = bool(scale_attn_by_inverse_layer_idx)
        self.growth_norm_mask = growth_norm_mask
        self.layer_gates = layer_gates
        self.blockwise_attention = bool(blockwise_attention)
        self.blockwise_block_size = blockwise_block_size
        self.use_cache = use_cache
        self.initializer_range = initializer_range
        if position_embedding_type not in ("xpos", "rope"):
            raise ValueError(f"position_embedding_type={position_embedding_type!r} must be 'xpos' or 'rope'")
        if hidden_act != "gelu_pytorch_tanh":
            raise ValueError(f"hidden_act={hidden_act!r}: FLM uses 'gelu_pytorch_tanh'")
        if blockwise_block_size is not None and not (isinstance(blockwise_block_size, int) and blockwise_block_size >= 1):
            raise ValueError(f"blockwise_block_size={blockwise_block_size!r} must be a positive integer or null")
        if layer_gates is not None and len(layer_gates) != num_hidden_layers:
            raise ValueError(f"layer_gates has {len(layer_gates)} entries for {num_hidden_layers} layers")
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def logit_scale(self) -> float:
        """What the logits are multiplied by: µP's output_mult / mup_scale_factor, else 1."""
        return self.output_mult / self.mup_scale_factor if self.use_mup else 1.0
