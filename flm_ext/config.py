"""Typed configs for the FLM model and its parallel layout, validated once, plus named presets.

One `FLMConfig` describes the architecture (what a checkpoint's weights mean); one
`ParallelConfig` describes how it is split over processes. `validate(model, parallel)` checks
them together and raises `ConfigError` naming the offending field, so a bad 192-GPU launch fails
in a second on a laptop instead of minutes into start-up on a cluster. `to_transformer_config`
is the only place that translates to megatron-core's `TransformerConfig`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial

import torch

from flm_ext.flags import flag

# FLM-101B's tokenizer has 100,256 BPE ranks (cl100k_base); the embedding is padded to 100,352.
FLM_VOCAB_SIZE = 100_352
POSITION_EMBEDDINGS = ("xpos", "rope")


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the field and the value."""


@dataclass(frozen=True)
class FLMConfig:
    """The FLM architecture: GPT-3 style pre-LN decoder with xPos, GeLU(tanh), biases, tied embeddings.

    µP knobs follow the released FLM-101B: logits are multiplied by `mup_output_mult / m` and
    attention scores use 1/head_dim, where m = hidden_size / mup_base_width (`mup_width_mult`).
    """

    num_layers: int = flag()
    hidden_size: int = flag()
    num_attention_heads: int = flag()
    ffn_hidden_size: int | None = flag(None)  # None: 4 x hidden_size
    seq_length: int = flag(2048)
    vocab_size: int = flag(FLM_VOCAB_SIZE, help="padded vocabulary size (default: from the tokenizer)")
    position_embedding: str = flag("xpos", name="--position-embedding-type", choices=POSITION_EMBEDDINGS)  # xpos: FLM's; rope: the same rotation without decay
    rotary_base: int = flag(10000)
    xpos_scale_base: int = flag(512)
    layernorm_epsilon: float = 1e-5
    init_method_std: float = flag(0.02)
    hidden_dropout: float = flag(0.0)
    attention_dropout: float = flag(0.0)
    share_embeddings_and_output_weights: bool = True
    use_mup: bool = flag(False)
    mup_base_width: int = flag(256)
    mup_input_mult: float = flag(1.0)
    mup_output_mult: float = flag(2.0)
    # Set explicitly to keep m fixed across growth (the logits scale must not jump when width grows).
    mup_width_mult_override: float | None = None
    # Attention head size; None: hidden_size / num_attention_heads (GPT-3 and FLM). Set, it decouples
    # the attention width (heads x head size) from hidden_size, as megatron's kv_channels does, so
    # MSG growth can add heads without widening the residual stream (and vice versa).
    kv_channels: int | None = None
    # The released FLM-101B config's flag (GPT-2's semantics): attention scores of layer l (1-based)
    # divided by l on top of the usual scale. Off by default; docs/FLM.md section 7 says what is known.
    scale_attn_by_inverse_layer_idx: bool = flag(
        False, help="the released FLM-101B config's flag: divide layer l's attention scores by l (docs/FLM.md 7)")

    def __post_init__(self):
        if self.ffn_hidden_size is None:
            object.__setattr__(self, "ffn_hidden_size", 4 * self.hidden_size)

    @property
    def head_dim(self) -> int:
        if self.kv_channels is not None:
            return self.kv_channels
        return self.hidden_size // self.num_attention_heads

    @property
    def attention_width(self) -> int:
        """heads x head size: the QKV projection's rows / 3 and the attention output projection's columns."""
        return self.num_attention_heads * self.head_dim

    @property
    def mup_width_mult(self) -> float:
        if not self.use_mup:
            return 1.0
        if self.mup_width_mult_override is not None:
            return self.mup_width_mult_override
        return self.hidden_size / self.mup_base_width

    def replace(self, **changes) -> "FLMConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is split: Megatron's TP x PP (x virtual PP) x DP, plus sequence parallel."""

    tensor_model_parallel_size: int = flag(1)
    pipeline_model_parallel_size: int = flag(1)
    virtual_pipeline_model_parallel_size: int | None = None  # from --num-layers-per-virtual-pipeline-stage
    sequence_parallel: bool = flag(False)
    world_size: int | None = None  # None: tp x pp (DP = 1)

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size

    @property
    def data_parallel_size(self) -> int:
        world = self.world_size if self.world_size is not None else self.model_parallel_size
        return world // self.model_parallel_size


def _positive(obj, names):
    for name in names:
        value = getattr(obj, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}={value!r} must be a positive integer")


def _divides(what: str, value: int, by_name: str, by: int):
    if value % by:
        raise ConfigError(f"{what}={value} is not divisible by {by_name}={by}")


def validate(model: FLMConfig, parallel: ParallelConfig | None = None) -> None:
    """Check a model config (and its parallel layout, if given); raise ConfigError naming the field."""
    _positive(model, ["num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                      "seq_length", "vocab_size", "rotary_base", "xpos_scale_base", "mup_base_width",
                      "kv_channels"])
    if model.position_embedding not in POSITION_EMBEDDINGS:
        raise ConfigError(f"position_embedding={model.position_embedding!r} must be one of {POSITION_EMBEDDINGS}")
    if model.kv_channels is None:
        _divides("hidden_size", model.hidden_size, "num_attention_heads", model.num_attention_heads)
    if model.head_dim % 2:
        raise ConfigError(f"head dim hidden_size/num_attention_heads={model.head_dim} must be even for xPos/rotary")
    for name in ("hidden_dropout", "attention_dropout"):
        if not 0.0 <= getattr(model, name) < 1.0:
            raise ConfigError(f"{name}={getattr(model, name)} must be in [0, 1)")
    for name in ("layernorm_epsilon", "init_method_std", "mup_input_mult", "mup_output_mult"):
        if not getattr(model, name) > 0:
            raise ConfigError(f"{name}={getattr(model, name)} must be > 0")
    if parallel is None:
        return
    _positive(parallel, ["tensor_model_parallel_size", "pipeline_model_parallel_size",
                         "virtual_pipeline_model_parallel_size", "world_size"])
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    _divides("num_attention_heads", model.num_attention_heads, "tensor_model_parallel_size", tp)
    _divides("ffn_hidden_size", model.ffn_hidden_size, "tensor_model_parallel_size", tp)
    _divides("vocab_size", model.vocab_size, "tensor_model_parallel_size", tp)
    stages = pp * (parallel.virtual_pipeline_model_parallel_size or 1)
    _divides("num_layers", model.num_layers, "pipeline_model_parallel_size x virtual_pipeline_model_parallel_size",
             stages)
    if parallel.virtual_pipeline_model_parallel_size is not None and pp < 2:
        raise ConfigError("virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size >= 2")
    if parallel.sequence_parallel and tp < 2:
        raise ConfigError("sequence_parallel needs tensor_model_parallel_size >= 2")
    if parallel.sequence_parallel:
        _divides("seq_length", model.seq_length, "tensor_model_parallel_size (sequence_parallel)", tp)
    if parallel.world_size is not None:
        _divides("world_size", parallel.world_size,
                 "tensor_model_parallel_size x pipeline_model_parallel_size", parallel.model_parallel_size)


def num_parameters(model: FLMConfig) -> int:
    """Exact parameter count of the FLM model (tied embeddings counted once; no position table)."""
    h, f, v, n = model.hidden_size, model.ffn_hidden_size, model.vocab_size, model.num_layers
    a = model.attention_width  # = h unless kv_channels decouples it
    attention = (h * 3 * a + 3 * a) + (a * h + h)
    mlp = (h * f + f) + (f * h + h)
    norms = 2 * (2 * h)
    embeddings = v * h * (1 if model.share_embeddings_and_output_weights else 2)
    return n * (attention + mlp + norms) + 2 * h + embeddings


def pad_vocab_size(vocab_size: int, tensor_model_parallel_size: int = 1, multiple: int = 128) -> int:
    """Megatron's rule: pad the embedding to a multiple of `multiple x TP` (100,256 -> 100,352)."""
    step = multiple * tensor_model_parallel_size
    return int(math.ceil(vocab_size / step) * step)


def _flm(num_layers: int, hidden: int, heads: int, **kw) -> FLMConfig:
    return FLMConfig(num_layers=num_layers, hidden_size=hidden, num_attention_heads=heads, **kw)


# The paper's stages (docs/FLM.md section 2); heads keep head_dim 128 so growth keeps head size.
# Tiny presets mirror the growth path at CPU scale (head_dim 16): width growth 1 -> 2, depth growth 2 -> 3.
_FLM_MUP = dict(use_mup=True, mup_base_width=256, mup_input_mult=1.0, mup_output_mult=2.0)
PRESETS: dict[str, FLMConfig] = {
    "flm-16b": _flm(40, 5632, 44, **_FLM_MUP),
    "flm-51b": _flm(40, 10240, 80, **_FLM_MUP),
    "flm-101b": _flm(80, 10240, 80, **_FLM_MUP),
    "tiny-stage1": _flm(4, 64, 4, seq_length=128, vocab_size=8192),
    "tiny-stage2": _flm(4, 128, 8, seq_length=128, vocab_size=8192),
    "tiny-stage3": _flm(8, 128, 8, seq_length=128, vocab_size=8192),
    "tiny-test": _flm(2, 32, 4, seq_length=32, vocab_size=256),
}


def get_preset(name: str, **overrides) -> FLMConfig:
    """A named preset with optional field overrides, validated."""
    if name not in PRESETS:
        raise ConfigError(f"model preset {name!r} is unknown; choose one of {sorted(PRESETS)}")
    config = PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
    validate(config)
    return config


def _normal_init(std: float):
    return partial(torch.nn.init.normal_, mean=0.0, std=std)


def gpu_fusion_overrides(params_dtype: torch.dtype = torch.bfloat16) -> dict:
    """TransformerConfig fields for megatron's fusions that are exact for FLM.

    The fused cross-entropy always returns the logits' gradient in bf16, so it is on only for bf16
    models (where the logits, hence their gradient, are bf16 anyway).

    `bias_activation_fusion` makes megatron's MLP call its fused bias-GeLU, which is the tanh
    approximation (FLM's GeLU); megatron selects it by `activation_func is F.gelu`, so the config
    must name F.gelu (to_transformer_config does that only while this fusion is on, since
    unfused F.gelu is the erf GeLU).
    """
    fusions = dict(bias_activation_fusion=True, bias_dropout_fusion=True)
    if params_dtype == torch.bfloat16:
        fusions.update(cross_entropy_loss_fusion=True, cross_entropy_fusion_impl="native")
    return fusions


def to_transformer_config(model: FLMConfig, parallel: ParallelConfig | None = None, *,
                          params_dtype: torch.dtype = torch.float32, use_cpu_initialization: bool | None = None,
                          gpu_fusions: bool | None = None, **extra):
    """Translate to megatron-core's TransformerConfig (the one place that knows its field names).

    `extra` passes further TransformerConfig fields (recompute, fusions on GPU, ...).
    CPU-safe defaults: all fusions off (megatron-core's defaults), CPU initialisation when there is
    no CUDA, and unbatched p2p (interleaved PP over gloo mis-pairs batched messages).
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    parallel = parallel or ParallelConfig()
    validate(model, parallel)
    on_gpu = torch.cuda.is_available()
    if use_cpu_initialization is None:
        use_cpu_initialization = not on_gpu
    m = model.mup_width_mult
    hidden_std = model.init_method_std / math.sqrt(m)  # µP: matrix-like weights sigma / sqrt(m)
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        kv_channels=model.head_dim,
        add_bias_linear=True,
        add_qkv_bias=True,
        gated_linear_unit=False,
        activation_func=partial(torch.nn.functional.gelu, approximate="tanh"),
        normalization="LayerNorm",
        layernorm_epsilon=model.layernorm_epsilon,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method=_normal_init(hidden_std),
        output_layer_init_method=_normal_init(hidden_std / math.sqrt(2.0 * model.num_layers)),
        init_method_std=hidden_std,
        embedding_init_method=_normal_init(model.init_method_std),
        embedding_init_method_std=model.init_method_std,
        softmax_scale=(1.0 / model.head_dim) if model.use_mup else None,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        use_cpu_initialization=use_cpu_initialization,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        batch_p2p_comm=on_gpu,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        calculate_per_token_loss=True,  # losses are sums over tokens; see training/engine.py
    )
    if on_gpu if gpu_fusions is None else gpu_fusions:
        kwargs.update(gpu_fusion_overrides(params_dtype))
    kwargs.update(extra)
    if kwargs["bias_activation_fusion"]:
        # megatron picks its fused bias-GeLU, which is the tanh approximation, by `is F.gelu`.
        kwargs["activation_func"] = torch.nn.functional.gelu
    return TransformerConfig(**kwargs)


def describe(model: FLMConfig) -> str:
    """One line for logs: shape and size, e.g. '80 x 10240, 80 heads, FFN 40960, ...: 101.7B params'."""
    count = num_parameters(model)
    size = f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.2f}M"
    return (f"{model.num_layers} x {model.hidden_size}, {model.num_attention_heads} heads, "
            f"FFN {model.ffn_hidden_size}, seq {model.seq_length}, vocab {model.vocab_size}, "
            f"{model.position_embedding}{', muP' if model.use_mup else ''}: "
            f"{size} params")


__all__ = ["FLMConfig", "ParallelConfig", "ConfigError", "PRESETS", "FLM_VOCAB_SIZE", "get_preset",
           "validate", "num_parameters", "pad_vocab_size", "to_transformer_config", "describe"]
