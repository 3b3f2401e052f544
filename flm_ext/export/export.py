"""Export a torch_dist checkpoint to a transformers folder (`tools/export_hf.py`).

Output: safetensors shards + model.safetensors.index.json, config.json, generation_config.json,
configuration_flm.py / modeling_flm.py (copied from this package), tokenizer.json and
tokenizer_config.json. Built in `<save>.partial/` and renamed when complete.

The shards are written by a small streaming safetensors writer: the header is planned from shapes
alone, then each tensor is produced in row blocks (read from the checkpoint, folded, cast),
written and freed, so peak memory is one block, not a tensor or a shard. The files are deterministic (no time stamps or paths),
so export -> import -> export reproduces them byte for byte.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
from typing import Callable

import torch

from flm_ext.export.convert import DEFAULT_BLOCK_BYTES, ExportError, growth_of, hf_config, plan_tensors
from flm_ext.fileio import building
from flm_ext.progress import Progress

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_ST_DTYPE = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64"}
DEFAULT_SHARD_BYTES = 4 * 2 ** 30
_HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_CODE = ("configuration_flm.py", "modeling_flm.py")


def _nbytes(shape, dtype: torch.dtype) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * torch.tensor([], dtype=dtype).element_size()


def shard_plan(entries: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype, max_bytes: int) -> list[list[int]]:
    """Group tensor indices into shards of at most `max_bytes` (a bigger tensor gets a shard of its own)."""
    from flm_ext.checkpoint.writer import group_by_size

    return group_by_size([_nbytes(shape, dtype) for _, shape in entries], max_bytes)


def write_safetensors(path: str, items: list, dtype: torch.dtype,
                      on_tensor: Callable[[str, int], None] | None = None) -> None:
    """One safetensors file from (name, shape, blocks) items, each tensor's row blocks produced and
    written in turn (never a whole tensor in memory)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in items:
        size = _nbytes(shape, dtype)
        header[name] = {"dtype": _ST_DTYPE[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, shape, blocks in items:
            written = 0
            for block in blocks():  # row blocks: never the whole tensor in memory
                data = block.to(dtype).contiguous().reshape(-1).view(torch.uint8).numpy()
                f.write(memoryview(data))
                written += data.nbytes
                if on_tensor is not None:
                    on_tensor(name, data.nbytes)
                del block, data
            if written != _nbytes(shape, dtype):
                raise ExportError(f"{name}: wrote {written} bytes, planned {_nbytes(shape, dtype)} for {tuple(shape)}")


def write_weights(out: str, items: list, dtype: torch.dtype, max_shard_bytes: int, progress: Progress | None) -> int:
    """Shards + index into `out`; returns the total bytes of tensor data."""
    groups = shard_plan([(n, s) for n, s, _ in items], dtype, max_shard_bytes)
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        chosen = [items[i] for i in group]
        write_safetensors(os.path.join(out, name), chosen, dtype,
                          on_tensor=(lambda key, n: progress.update(n, key)) if progress is not None else None)
        for tensor_name, shape, _ in chosen:
            weight_map[tensor_name] = name
            total += _nbytes(shape, dtype)
    _write_json(os.path.join(out, "model.safetensors.index.json"),
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    return total


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_model_files(out: str, config: dict) -> None:
    """config.json, generation_config.json and the model code next to the weights."""
    _write_json(os.path.join(out, "config.json"), config)
    eos = config["eos_token_id"]
    _write_json(os.path.join(out, "generation_config.json"),
                {"bos_token_id": config["bos_token_id"], "eos_token_id": eos, "pad_token_id": eos,
                 "do_sample": False})
    for name in MODEL_CODE:
        shutil.copyfile(os.path.join(_HERE, name), os.path.join(out, name))


def export_checkpoint(ckpt, save: str, tokenizer, *, tokenizer_model: str | None = None,
                      dtype: torch.dtype = torch.float32, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                      block_bytes: int = DEFAULT_BLOCK_BYTES, log: Callable[[str], None] = print,
                      progress_interval: float = 5.0) -> dict:
    """Write the transformers folder `save` for an open checkpoint; returns its config.json dict."""
    from flm_ext.export.tokenizer import write_tokenizer

    from flm_ext.checkpoint import CheckpointError, check_tokenizer

    try:
        check_tokenizer(ckpt.record, tokenizer, ckpt.folder)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    cfg = ckpt.config
    vocab = tokenizer.vocab_size
    if vocab > cfg.vocab_size:
        raise ExportError(f"the tokenizer has {vocab} tokens but the checkpoint's embedding only "
                          f"{cfg.vocab_size} rows: wrong --tokenizer-* flags for this checkpoint?")
    from flm_ext.config import pad_vocab_size

    if cfg.vocab_size not in {pad_vocab_size(vocab, tp) for tp in (1, 2, 4, 8, 16, 32)}:
        log(f"export: warning: the tokenizer's {vocab} tokens do not pad to the checkpoint's {cfg.vocab_size} "
            f"embedding rows at any usual TP (the trainer pads to a multiple of 128 x TP): check the --tokenizer-* "
            f"flags unless training set --vocab-size")
    growth, lam = growth_of(ckpt)
    config = hf_config(cfg, vocab, tokenizer.eod, dtype, ckpt.iteration, growth, lam)
    items = list(plan_tensors(ckpt, vocab, block_bytes))
    total = sum(_nbytes(s, dtype) for _, s, _ in items)
    log(f"export: {ckpt.folder} (iteration {ckpt.iteration}) -> {save}: {len(items)} tensors, "
        f"{total / 2 ** 30:.2f} GiB {str(dtype).removeprefix('torch.')}, vocabulary {vocab} "
        f"(embedding rows {cfg.vocab_size})" + (f", growth masks folded at lambda {lam:g}" if growth else ""))
    progress = Progress(total, "export", unit="B", interval=progress_interval, emit=log)
    with building(save) as out:
        write_weights(out, items, dtype, max_shard_bytes, progress)
        write_model_files(out, config)
        write_tokenizer(tokenizer, out, tokenizer_model=tokenizer_model, model_max_length=cfg.seq_length)
    log(f"export: wrote {save} in {progress.elapsed:.1f}s")
    return config
