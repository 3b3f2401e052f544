"""tools/serve.py's own flags; the model source, checkpoint step and tokenizer groups are shared ones."""
from __future__ import annotations

from dataclasses import dataclass

from flm_ext.flags import flag


@dataclass(frozen=True)
class ServeArgs:
    engine: str = flag("vllm", choices=("vllm", "transformers"))
    tensor_parallel_size: int = flag(1, help="vLLM: GPUs (or CPU processes) to shard over")
    host: str = flag("127.0.0.1")
    port: int = flag(8000)
    served_model_name: str | None = flag(None, help="the model name clients send (default: the folder's)")
    engine_python: str | None = flag(None, help="python with vLLM installed (default: $VLLM_PYTHON, else this one)")


# ModelSource's help, as it applies to serving.
SOURCE_HELP = {"dtype": "--engine transformers", "device": "--engine transformers: cpu, cuda (default: cuda when "
                                                           "available)",
               "trust_remote_code": "serve an export whose model code is not this flm_ext's own (edited or another "
                                    "version)"}
