"""tools/serve.py: check the flags (cheap checks first), prepare the export, start the engine.

Every refusal is one line naming the flag or path, exit 2, before anything starts: a port in use,
a checkpoint without its tokenizer flags, a head size or growth ramp vLLM cannot serve, vLLM
missing from the engine python.
"""
from __future__ import annotations

import json
import os
import socket
import sys

from flm_ext.serving import ServeError


def _say(message: str) -> None:
    print(message, flush=True)


def check_port(host: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ServeError(f"--port {port} must be in 1..65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServeError(f"--port {port}: {host}:{port} is in use or not available ({e.strerror}); "
                             f"choose another --port") from None


def curl_line(host: str, port: int, name: str) -> str:
    body = json.dumps({"model": name, "prompt": "In the beginning", "max_tokens": 32, "temperature": 0},
                      ensure_ascii=False)
    return f"curl http://{host}:{port}/v1/completions -H 'Content-Type: application/json' -d '{body}'"


def run(args, extra: list[str]) -> int:
    try:
        if args.tensor_parallel_size < 1:
            raise ServeError(f"--tensor-parallel-size {args.tensor_parallel_size} must be >= 1")
        if args.engine == "transformers" and args.tensor_parallel_size != 1:
            raise ServeError("--tensor-parallel-size is vLLM's: the transformers fallback serves from one process")
        if args.engine == "transformers" and extra:
            raise ServeError(f"arguments after -- ({' '.join(extra)}) are for vLLM, not --engine transformers")
        check_port(args.host, args.port)
        from flm_ext.serving.source import prepare

        folder = prepare(args.load, args, log=_say)
        name = args.served_model_name or os.path.basename(os.path.normpath(folder))
        if args.engine == "vllm":
            return _run_vllm(args, folder, name, extra)
        return _run_fallback(args, folder, name)
    except ServeError as e:
        print(f"serve: error: {e}", file=sys.stderr, flush=True)
        return 2


def _run_vllm(args, folder: str, name: str, extra: list[str]) -> int:
    import signal
    import subprocess

    from flm_ext.serving import vllm_engine
    from flm_ext.serving.source import check_for_vllm

    import torch

    # The model's own limits first (no engine needed to know them); the engine runs on this machine.
    config = check_for_vllm(folder, on_gpu=torch.cuda.is_available())
    python = vllm_engine.engine_python(args.engine_python)
    found = vllm_engine.probe(python)
    argv, env = vllm_engine.command(python, folder, name=name, host=args.host, port=args.port,
                                    tensor_parallel=args.tensor_parallel_size,
                                    max_model_len=int(config["max_position_embeddings"]), on_gpu=found["cuda"],
                                    extra=extra)
    _say(f"serve: starting vLLM {found['vllm']} ({'GPU' if found['cuda'] else 'CPU'}, tensor parallel "
         f"{args.tensor_parallel_size}) on {folder} as '{name}' at http://{args.host}:{args.port}/v1:")
    _say("  " + " ".join(a if a and " " not in a and "'" not in a else json.dumps(a) for a in argv))
    _say(f"serve: when GET http://{args.host}:{args.port}/health answers (start-up takes minutes), try:")
    _say("  " + curl_line(args.host, args.port, name))
    proc = subprocess.Popen(argv, env=env)

    def forward(signum, frame):
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return proc.wait()


def _run_fallback(args, folder: str, name: str) -> int:
    import torch

    from flm_ext.export.generation import load_hf_model
    from flm_ext.serving.server import Worker, serve
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    try:
        model, codec = load_hf_model(folder, dtype=dtype, device=device, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ServeError(f"--load {folder}: {e}") from None
    worker = Worker(model, codec, name)

    def ready(server) -> None:
        host, port = server.server_address[:2]
        _say(f"serve: transformers fallback ({device}, {args.dtype}) serving {folder} as '{name}' at "
             f"http://{host}:{port}/v1 (/v1/completions, /v1/chat/completions, /v1/models, /health); try:")
        _say("  " + curl_line(host, port, name))

    try:
        serve(worker, args.host, args.port, ready)
    except KeyboardInterrupt:
        pass
    return 0
