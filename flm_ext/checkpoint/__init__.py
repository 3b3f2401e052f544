"""The checkpoint format and every path that writes or reads it: the one owner of the on-disk
layout, read by training, growth, evaluation and export.

- `layout`: run roots, `iter_N` folders, the latest marker; never a silent "no checkpoint".
- `integrity`: the manifest (sizes + xxh3 checksums) and loading that never runs code.
- `schema`: `CheckpointRecord`, the typed `common.pt` (iteration, model config, tokenizer, run
  contract, growth...): the one place that builds, validates and reads it, every older layout too.
- `reader`: `open_checkpoint(path)` -> a verified `Checkpoint` with its record and a reader of
  global tensor slices at any saved TP/PP.
- `writer`: tensor-by-tensor torch_dist output for offline tools (growth, import, synthetic inputs).
- `training_io`: the trainer's save and load of a live, distributed model (all ranks, megatron's
  dist_checkpointing, optimizer and RNG state, the fixes megatron's torch-Adam load path needs);
  `async_save`: the same save written in the background.
- `model_state`: model weights alone, into built model chunks (evaluation, growth checks).
- `run_record`, `lock`: the run contract and loss ledger a checkpoint carries; one writer per folder.
"""
from flm_ext import lazy_exports

# Names resolve on first use (PEP 562), so `flm_ext.checkpoint.layout` (paths only) is importable
# without torch: the growth tool resolves its input folder before torch is imported.
_EXPORTS = {
    **{name: "integrity" for name in ("MANIFEST", "load_common", "load_metadata", "manifest_for_tree",
                                      "verify_files")},
    **{name: "layout" for name in ("LATEST", "CheckpointError", "complete_iterations", "holds_checkpoint",
                                   "iteration_dir", "iteration_of", "iterations_present", "read_latest",
                                   "resolve", "write_latest")},
    **{name: "reader" for name in ("Checkpoint", "CheckpointReader", "open_checkpoint", "verify_checkpoint")},
    **{name: "schema" for name in ("RECORD_VERSION", "CheckpointRecord", "TokenizerRecord", "check_tokenizer",
                                   "read_record")},
    **{name: "writer" for name in ("DEFAULT_BUCKET_BYTES", "Chunk", "finish_iteration_folder", "tensor_chunks",
                                   "write_chunks")},
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
