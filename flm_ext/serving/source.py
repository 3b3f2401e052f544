"""What to serve: an export folder as given, or a training checkpoint exported once and cached
next to it; and the refusals an engine needs, said before anything starts.

The cache for checkpoint `ROOT` at iteration N is `ROOT.hf/iter_000000N` (built in `.partial` and
renamed, so a half-written cache is never served; a later run reuses it).
"""
from __future__ import annotations

import json
import os
from typing import Callable

from flm_ext.serving import ServeError

# Head sizes vLLM's CPU attention kernel takes (its error lists the same; GPU backends take more).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def cache_folder(ckpt) -> str:
    """Where the export of an open checkpoint is cached: next to the checkpoint root."""
    root = os.path.dirname(os.path.normpath(ckpt.folder))  # ckpt.folder is ROOT/iter_N
    return f"{root}.hf{os.sep}iter_{ckpt.iteration:07d}"


def prepare(load: str, args, log: Callable[[str], None] = print) -> str:
    """The export folder to serve for --load (exporting a checkpoint first, or reusing its cache)."""
    if not os.path.exists(load):
        raise ServeError(f"--load {load}: no such file or directory")
    if is_export(load):
        from flm_ext.export import ExportError
        from flm_ext.export.loading import check_code

        try:  # vLLM runs the folder's modeling_flm.py: only this package's own unless trusted
            check_code(load, getattr(args, "trust_remote_code", False))
        except ExportError as e:
            raise ServeError(str(e)) from None
        return load
    if args.tokenizer_type is None:
        raise ServeError(f"--load {load} is a training checkpoint, which does not store its tokenizer: give the "
                         f"--tokenizer-type (and --tokenizer-model / --vocab-file / --merge-file) it was trained with")
    from flm_ext.export import ExportError, build_tokenizer_from_flags, open_for_export
    from flm_ext.export.export import export_checkpoint

    try:
        ckpt = open_for_export(load, args.ckpt_step)
        tokenizer = build_tokenizer_from_flags(args)
        folder = cache_folder(ckpt)
        if is_export(folder):
            log(f"serve: using the cached export {folder}")
            return folder
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        log(f"serve: exporting {ckpt.folder} to {folder} (once; reused next time)")
        export_checkpoint(ckpt, folder, tokenizer, tokenizer_model=args.tokenizer_model, log=log)
    except ExportError as e:
        raise ServeError(str(e)) from None
    return folder


def check_for_vllm(folder: str, on_gpu: bool) -> dict:
    """config.json of an export vLLM can serve (ServeError naming what it cannot)."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    head = int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])
    if not on_gpu and head not in VLLM_CPU_HEAD_SIZES:
        raise ServeError(f"--load {folder}: head size {head} ({config['hidden_size']} hidden / "
                         f"{config['num_attention_heads']} heads) is not one vLLM's CPU attention kernel takes "
                         f"({', '.join(map(str, VLLM_CPU_HEAD_SIZES))}); serve it with --engine transformers")
    if config.get("growth_norm_mask") is not None or config.get("layer_gates") is not None:
        raise ServeError(f"--load {folder} was exported inside an MSG growth ramp (mask-weighted LayerNorm / layer "
                         f"gates, which vLLM cannot fold into its layers): serve it with --engine transformers, or "
                         f"export a checkpoint past the ramp")
    if config.get("blockwise_attention"):
        raise ServeError(f"--load {folder} sets blockwise_attention, which vLLM's attention does not apply (it "
                         f"ignores the model's mask): serve it with --engine transformers")
    return config
