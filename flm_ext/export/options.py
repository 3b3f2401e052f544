"""tools/export_hf.py's own flags (the checkpoint step, tokenizer and --verify groups are shared ones)."""
from __future__ import annotations

from dataclasses import dataclass

from flm_ext.flags import flag


@dataclass(frozen=True)
class ExportArgs:
    load: str = flag(required=True, help="checkpoint root (latest iteration) or an iter_N folder")
    save: str = flag(required=True, help="output folder; must not exist")
    dtype: str = flag("float32", help="float32 or bfloat16")
    max_shard_mb: int = flag(4096, help="largest safetensors shard")
    block_mb: int = flag(512, help="tensors above this are read and written in row blocks of this size (bounds "
                                   "memory)")
    progress_interval: float = flag(5.0, help="seconds between progress lines")


@dataclass(frozen=True)
class ImportArgs:
    load: str = flag(required=True, help="exported transformers folder (config.json, safetensors)")
    save: str = flag(required=True, help="new checkpoint root; must not exist")


@dataclass(frozen=True)
class ModelSource:
    """A trained model to run (generation, serving): an export or a checkpoint, and how to load it."""

    load: str = flag(required=True, help="exported folder, checkpoint root or iter_N folder")
    dtype: str = flag("float32", choices=("float32", "bfloat16"))
    device: str | None = flag(None, help="cpu, cuda, ... (default: cuda when available)")
    trust_remote_code: bool = flag(False, help="run model code from an exported folder that is not this flm_ext's own "
                                               "(edited, another version, another model); without it such a folder "
                                               "is refused")


@dataclass(frozen=True)
class GenerateArgs:
    prompt: list[str] | None = flag(None, action="append", help="text to continue (repeat for several; or "
                                                                "--interactive)")
    interactive: bool = flag(False, help="read prompts from standard input, one per line")
    max_new_tokens: int = flag(64)
    greedy: bool = flag(False, help="argmax decoding (the default without --temperature)")
    temperature: float | None = flag(None, help="sample with this temperature")
    top_p: float = flag(1.0)
    top_k: int = flag(0)
    seed: int = flag(0)
    output: str | None = flag(None, metavar="PATH", help="write the prompts and their continuations (and the "
                                                         "settings) as JSON here too")
