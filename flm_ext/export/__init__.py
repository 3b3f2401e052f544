"""Use a trained FLM outside the trainer: transformers export and import, and generation.

- `export_from_flags` / `export.export_checkpoint`: torch_dist checkpoint -> transformers folder
  (`tools/export_hf.py`); `importer.import_hf`: the inverse (`tools/import_hf.py`).
- `generation.load_hf_model(path)`: an `FLMForCausalLM` and its tokenizer from an exported folder
  or straight from a checkpoint (converted in memory); `generation.generate_tokens`: the KV-cache
  decoding loop behind `tools/generate.py` (also for evaluation's generate_until).
- `configuration_flm.py` / `modeling_flm.py`: the transformers model, standalone (copied into
  every export; they do not import flm_ext).

This is an application layer: it reads checkpoints through `flm_ext.checkpoint` and imports
nothing from training code.
"""
from __future__ import annotations

import os

from flm_ext.export.errors import ExportError


def build_tokenizer_from_flags(args):
    """The training tokenizer from pretrain_flm.py's --tokenizer-* flags (ExportError if unusable)."""
    from flm_ext.data.tokenizers import build_tokenizer

    try:
        return build_tokenizer(args.tokenizer_type, args.vocab_file, args.merge_file, args.tokenizer_model)
    except (ValueError, RuntimeError, OSError) as e:
        raise ExportError(f"--tokenizer-type {args.tokenizer_type}: {e}") from None


def open_for_export(path: str, iteration: int | None = None):
    """flm_ext.checkpoint's verified Checkpoint, with its errors as ExportError naming --load."""
    from flm_ext.checkpoint import CheckpointError, open_checkpoint

    try:
        return open_checkpoint(path, iteration)
    except CheckpointError as e:
        raise ExportError(f"--load {path}: {e}") from None


def export_from_flags(args) -> dict:
    """tools/export_hf.py: check the flags (cheap checks first), then export."""
    from flm_ext.export.export import DTYPES, export_checkpoint

    if args.dtype not in DTYPES:
        raise ExportError(f"--dtype {args.dtype}: choose one of {', '.join(DTYPES)}")
    save = os.path.normpath(args.save)
    if os.path.lexists(save):
        raise ExportError(f"--save {save} already exists; choose a new path (nothing was written)")
    for flag in ("max_shard_mb", "block_mb"):
        if getattr(args, flag) < 1:
            raise ExportError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= 1")
    ckpt = open_for_export(args.load, args.ckpt_step)
    tokenizer = build_tokenizer_from_flags(args)
    return export_checkpoint(ckpt, save, tokenizer, tokenizer_model=args.tokenizer_model,
                             dtype=DTYPES[args.dtype], max_shard_bytes=args.max_shard_mb * 2 ** 20,
                             block_bytes=args.block_mb * 2 ** 20,
                             log=lambda m: print(m, flush=True), progress_interval=args.progress_interval)


__all__ = ["ExportError", "export_from_flags", "open_for_export", "build_tokenizer_from_flags"]
