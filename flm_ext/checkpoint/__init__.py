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
from flm_ext.checkpoint.integrity import MANIFEST, load_common, load_metadata, manifest_for_tree, verify_files
from flm_ext.checkpoint.layout import (LATEST, CheckpointError, complete_iterations, holds_checkpoint,
                                       iteration_dir, iteration_of, iterations_present, read_latest, resolve,
                                       write_latest)
from flm_ext.checkpoint.reader import Checkpoint, CheckpointReader, open_checkpoint, verify_checkpoint
from flm_ext.checkpoint.schema import (RECORD_VERSION, CheckpointRecord, TokenizerRecord, check_tokenizer,
                                       read_record)
from flm_ext.checkpoint.writer import (DEFAULT_BUCKET_BYTES, Chunk, finish_iteration_folder, tensor_chunks,
                                       write_chunks)

__all__ = ["LATEST", "MANIFEST", "RECORD_VERSION", "CheckpointError", "Checkpoint", "CheckpointReader",
           "CheckpointRecord", "Chunk", "TokenizerRecord", "check_tokenizer", "read_record",
           "DEFAULT_BUCKET_BYTES", "complete_iterations", "finish_iteration_folder",
           "holds_checkpoint", "iteration_dir", "iteration_of", "iterations_present", "load_common",
           "load_metadata", "manifest_for_tree", "open_checkpoint", "read_latest", "resolve", "tensor_chunks",
           "verify_checkpoint", "verify_files", "write_chunks", "write_latest"]
