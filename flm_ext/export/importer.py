"""Import an exported transformers folder back into a training checkpoint (`tools/import_hf.py`).

The inverse of the export: each safetensors tensor is read on its own (`safe_open`, memory about
one tensor) and written as the trainer's torch_dist layout by flm_ext.checkpoint's tensor-by-tensor
writer: one chunk per layer of the stacked `decoder.layers.*` tensors, the per-layer `_extra_state`
objects megatron's linears save, and common state with the FLMConfig in `flm.model_config`. There
is no optimizer state, so `pretrain_flm.py --load CKPT --start-new-stage` (or --finetune) starts a
fresh optimizer; the trainer loads it at any TP/PP.

The embedding gets back its padded rows (the export kept the true vocabulary only) as zeros: the
trained values of padding rows are not in the export. They are never a target, but they enter the
softmax of the padded vocabulary, so the first loss after an import matches the original's exactly
only when the tokenizer fills the padded size (otherwise to within that small term). The config
comes from config.json's `flm_training` record when present (exports of this project), else from
its transformers fields. An export made inside a growth ramp (masks folded in) is refused.

Nothing is written before the folder is proven whole (``check_tensors``): config.json is JSON with
every field the model needs (no defaults for shapes), its ``flm_training`` record agrees with its
transformers fields, and the safetensors hold exactly the tensors that config implies, each of the
shape it implies; an unused tensor (a second layer under a 1-layer config) is refused by name
rather than dropped.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import torch

from flm_ext.config import ConfigError, FLMConfig, validate
from flm_ext.export.convert import EMBEDDING, LAYER_KEYS, OTHER_KEYS, OUTPUT, VOCAB_KEYS, ExportError
from flm_ext.fileio import building


def _read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ExportError(f"--load {folder}: no config.json (not a transformers folder)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ExportError(f"--load {folder}: {path} is not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise ExportError(f"--load {folder}: {path} is not a JSON object")
    if config.get("model_type") != "flm":
        raise ExportError(f"--load {folder}: model_type {config.get('model_type')!r} is not 'flm'")
    if config.get("growth_norm_mask") is not None or config.get("layer_gates") is not None:
        raise ExportError(f"--load {folder} was exported inside an MSG growth ramp (masks folded into the "
                          f"weights cannot be taken out again); export a checkpoint past the ramp")
    return config


# Fields the model cannot do without: in config.json's transformers fields, and in the training record.
_REQUIRED_HF = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                "intermediate_size", "max_position_embeddings", "position_embedding_type", "rope_theta",
                "layer_norm_eps", "tie_word_embeddings")
_REQUIRED_RECORD = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "seq_length", "vocab_size",
                    "position_embedding", "share_embeddings_and_output_weights", "use_mup")
# (transformers field, training-record field): both must say the same.
_SAME = (("num_hidden_layers", "num_layers"), ("hidden_size", "hidden_size"),
         ("num_attention_heads", "num_attention_heads"), ("intermediate_size", "ffn_hidden_size"),
         ("max_position_embeddings", "seq_length"), ("tie_word_embeddings", "share_embeddings_and_output_weights"),
         ("use_mup", "use_mup"))


def _require(config: dict, fields, where: str) -> None:
    missing = [f for f in fields if config.get(f) is None]
    if missing:
        raise ExportError(f"--load {where}: config.json lacks {', '.join(missing)} (the model cannot be built "
                          f"without {'it' if len(missing) == 1 else 'them'}; nothing was written)")


def training_config(config: dict, where: str) -> FLMConfig:
    """The FLMConfig: the export's record, else derived from the transformers fields."""
    training = config.get("flm_training")
    if training is not None and not isinstance(training, dict):
        raise ExportError(f"--load {where}: config.json's flm_training is not an object")
    record = (training or {}).get("model_config")
    _require(config, _REQUIRED_HF, where)
    if config.get("position_embedding_type") == "xpos":
        _require(config, ("xpos_scale_base",), where)
    if config.get("use_mup"):
        _require(config, ("input_mult", "output_mult", "mup_scale_factor"), where)
    if record is not None:
        if not isinstance(record, dict):
            raise ExportError(f"--load {where}: config.json's flm_training.model_config is not an object")
        missing = [f for f in _REQUIRED_RECORD if record.get(f) is None]
        if missing:
            raise ExportError(f"--load {where}: config.json's flm_training.model_config lacks {', '.join(missing)}; "
                              f"nothing was written")
        differ = [f"{hf} {config[hf]!r} vs flm_training.model_config.{ours} {record[ours]!r}" for hf, ours in _SAME
                  if config[hf] != record[ours]]
        if record.get("vocab_size") != (config.get("padded_vocab_size") or record.get("vocab_size")):
            differ.append(f"padded_vocab_size {config.get('padded_vocab_size')!r} vs flm_training.model_config."
                          f"vocab_size {record.get('vocab_size')!r}")
        if differ:
            raise ExportError(f"--load {where}: config.json contradicts itself ({'; '.join(differ)}); "
                              f"nothing was written")
    try:
        if record is not None:
            cfg = FLMConfig(**record)
        else:
            heads, head_dim, hidden = config["num_attention_heads"], config["head_dim"], config["hidden_size"]
            cfg = FLMConfig(
                num_layers=config["num_hidden_layers"], hidden_size=hidden, num_attention_heads=heads,
                kv_channels=None if heads * head_dim == hidden else head_dim,
                ffn_hidden_size=config["intermediate_size"], seq_length=config["max_position_embeddings"],
                vocab_size=config.get("padded_vocab_size") or config["vocab_size"],
                position_embedding=config.get("position_embedding_type", "xpos"),
                rotary_base=int(config.get("rope_theta", 10000)), xpos_scale_base=int(config.get("xpos_scale_base", 512)),
                layernorm_epsilon=config.get("layer_norm_eps", 1e-5),
                share_embeddings_and_output_weights=config.get("tie_word_embeddings", True),
                use_mup=config.get("use_mup", False), mup_input_mult=config.get("input_mult", 1.0),
                mup_output_mult=config.get("output_mult", 1.0),
                mup_width_mult_override=config.get("mup_scale_factor") if config.get("use_mup") else None,
                scale_attn_by_inverse_layer_idx=bool(config.get("scale_attn_by_inverse_layer_idx", False)))
        validate(cfg)
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise ExportError(f"--load {where}: config.json does not describe an FLM model ({e})") from None
    if cfg.head_dim != config["head_dim"]:
        raise ExportError(f"--load {where}: config.json contradicts itself (head_dim {config['head_dim']!r} vs "
                          f"{cfg.head_dim} from the model config); nothing was written")
    if not isinstance(config["vocab_size"], int) or not 0 < config["vocab_size"] <= cfg.vocab_size:
        raise ExportError(f"--load {where}: vocab_size {config['vocab_size']!r} must be a positive integer no larger "
                          f"than padded_vocab_size {cfg.vocab_size}")
    return cfg


class _Tensors:
    """Lazy access to the tensors of the folder's safetensors shards, by HF name."""

    def __init__(self, folder: str):
        from safetensors import safe_open

        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
                raise ExportError(f"--load {folder}: {index} is not a safetensors index ({type(e).__name__}: "
                                  f"{e})") from None
        elif os.path.isfile(os.path.join(folder, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            raise ExportError(f"--load {folder}: no model.safetensors(.index.json)")
        self.where, self.handles = {}, []
        for name in files:
            path = os.path.join(folder, name)
            if not isinstance(name, str) or not os.path.isfile(path):
                raise ExportError(f"--load {folder}: no {name} (listed in model.safetensors.index.json)")
            try:
                handle = safe_open(path, framework="pt")
            except Exception as e:  # safetensors raises its own SafetensorError (and OSError) on a bad header
                raise ExportError(f"--load {folder}: {path} is not a safetensors file ({e})") from None
            self.handles.append(handle)
            for key in handle.keys():
                self.where[key] = handle

    def get(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise ExportError(f"the export has no tensor {name!r}")
        return self.where[name].get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.where:
            raise ExportError(f"the export has no tensor {name!r}")
        return tuple(self.where[name].get_slice(name).get_shape())


def expected_shapes(cfg: FLMConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape, for an export of ``cfg`` with ``vocab_size`` true vocabulary rows
    (the export drops the padding rows): every tensor the folder must hold, and no other."""
    H, F, qkv = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_attention_heads * cfg.head_dim
    per_layer = {
        "input_layernorm.weight": (H,), "input_layernorm.bias": (H,),
        "self_attention.linear_qkv.weight": (3 * qkv, H), "self_attention.linear_qkv.bias": (3 * qkv,),
        "self_attention.linear_proj.weight": (H, qkv), "self_attention.linear_proj.bias": (H,),
        "pre_mlp_layernorm.weight": (H,), "pre_mlp_layernorm.bias": (H,),
        "mlp.linear_fc1.weight": (F, H), "mlp.linear_fc1.bias": (F,),
        "mlp.linear_fc2.weight": (H, F), "mlp.linear_fc2.bias": (H,),
    }
    shapes = {OTHER_KEYS[EMBEDDING]: (vocab_size, H), OTHER_KEYS["decoder.final_layernorm.weight"]: (H,),
              OTHER_KEYS["decoder.final_layernorm.bias"]: (H,)}
    if not cfg.share_embeddings_and_output_weights:
        shapes[OTHER_KEYS[OUTPUT]] = (vocab_size, H)
    for key, name in LAYER_KEYS.items():
        for i in range(cfg.num_layers):
            shapes[name.format(i=i)] = per_layer[key[len("decoder.layers."):]]
    return shapes


def _names(names, limit: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_tensors(cfg: FLMConfig, vocab_size: int, tensors: "_Tensors", where: str) -> None:
    """The folder holds exactly the tensors config.json implies, each of the implied shape and a
    float dtype; raises ExportError naming them (before anything is written)."""
    expected = expected_shapes(cfg, vocab_size)
    shape_of = f"{cfg.num_layers} layers, hidden {cfg.hidden_size}, FFN {cfg.ffn_hidden_size}, vocabulary {vocab_size}"
    unused = set(tensors.where) - set(expected)
    if unused:
        raise ExportError(f"--load {where}: {len(unused)} tensors that config.json ({shape_of}) has no place for: "
                          f"{_names(unused)}; nothing was written")
    missing = set(expected) - set(tensors.where)
    if missing:
        raise ExportError(f"--load {where}: config.json ({shape_of}) needs tensors the folder lacks: "
                          f"{_names(missing)}; nothing was written")
    for name in sorted(expected):
        if tensors.shape(name) != expected[name]:
            raise ExportError(f"--load {where}: tensor {name} has shape {tensors.shape(name)}, config.json "
                              f"({shape_of}) implies {expected[name]}; nothing was written")
        dtype = tensors.where[name].get_slice(name).get_dtype()
        if dtype not in _DTYPES:
            raise ExportError(f"--load {where}: tensor {name} is {dtype}; an export holds F32, BF16 or F16")


_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _plan(cfg: FLMConfig, tensors: _Tensors):
    """flm_ext.checkpoint Chunks of the checkpoint, and a function producing each one."""
    from flm_ext.checkpoint import tensor_chunks
    from flm_ext.checkpoint.writer import empty_extra_state, extra_state_chunks

    dtype = tensors.where[OTHER_KEYS[EMBEDDING]].get_slice(OTHER_KEYS[EMBEDDING]).get_dtype()
    dtype = _DTYPES[dtype]
    chunks, L = [], cfg.num_layers
    keys = [EMBEDDING, "decoder.final_layernorm.weight", "decoder.final_layernorm.bias"]
    if not cfg.share_embeddings_and_output_weights:
        keys.append(OUTPUT)
    for key in keys:
        shape = (cfg.vocab_size, cfg.hidden_size) if key in VOCAB_KEYS else tensors.shape(OTHER_KEYS[key])
        chunks += tensor_chunks(key, key, "param", shape, dtype, None)
    for key, name in LAYER_KEYS.items():
        chunks += tensor_chunks(key, key, "param", tensors.shape(name.format(i=0)), dtype, L)
    chunks += extra_state_chunks(L)

    def produce(c) -> object:
        if c.dtype is None:
            return empty_extra_state()
        if c.layer is None:
            tensor = tensors.get(OTHER_KEYS[c.key])
            if c.key in VOCAB_KEYS:
                padded = torch.zeros(c.sizes, dtype=tensor.dtype)
                padded[:tensor.shape[0]] = tensor
                tensor = padded
        else:
            tensor = tensors.get(LAYER_KEYS[c.key].format(i=c.layer)).unsqueeze(0)
        if tuple(tensor.shape) != tuple(c.sizes):
            raise ExportError(f"{c.key}: the export's tensor has shape {tuple(tensor.shape)}, the config "
                              f"implies {tuple(c.sizes)}")
        return tensor.to(c.dtype).contiguous()
    return chunks, produce


def import_hf(load: str, save: str, *, log: Callable[[str], None] = print) -> str:
    """Write the checkpoint root `save` from the export at `load`; returns its iteration folder."""
    from flm_ext.checkpoint import CheckpointRecord, finish_iteration_folder, iteration_dir, write_chunks, write_latest
    from flm_ext.progress import Progress

    save = os.path.normpath(save)
    if os.path.lexists(save):
        raise ExportError(f"--save {save} already exists; choose a new path (nothing was written)")
    if not os.path.isdir(load):
        raise ExportError(f"--load {load}: no such folder")
    config = _read_config(load)
    cfg = training_config(config, load)
    iteration = int((config.get("flm_training") or {}).get("iteration") or 0)
    tensors = _Tensors(load)
    check_tensors(cfg, config["vocab_size"], tensors, load)
    chunks, produce = _plan(cfg, tensors)
    total = sum(c.nbytes for c in chunks)
    log(f"import: {load} -> {save} (iteration {iteration}): {len(chunks)} chunks, {total / 2 ** 30:.2f} GiB")
    progress = Progress(total, "import", unit="B", emit=log)
    record = CheckpointRecord(iteration=iteration, model_config=cfg, imported_from="transformers")
    with building(save) as partial:
        folder = iteration_dir(partial, iteration)
        os.makedirs(folder)
        write_chunks(folder, chunks, produce, on_chunk=lambda c: progress.update(c.nbytes, c.key))
        finish_iteration_folder(folder, record)
        write_latest(partial, iteration)
    log(f"import: wrote {save} in {progress.elapsed:.1f}s")
    return iteration_dir(save, iteration)
