#!/usr/bin/env python3
"""Serve a trained FLM over an OpenAI-compatible API (/v1/completions, /v1/chat/completions,
/v1/models, /health, streaming):

  python tools/serve.py --load exports/flm-tiny                       # vLLM (GPU or CPU build)
  python tools/serve.py --load runs/s3 --tokenizer-type HuggingFaceTokenizer --tokenizer-model data/bpe.json
  python tools/serve.py --load exports/flm-101b --tensor-parallel-size 8 -- --gpu-memory-utilization 0.9
  python tools/serve.py --load exports/flm-tiny --engine transformers --port 8001   # no vLLM needed

--load is an exported folder (tools/export_hf.py) or a training checkpoint (exported once and cached
as ROOT.hf/iter_N; give the --tokenizer-* flags it was trained with). --engine vllm (default) runs
vLLM's server on the export (python from --engine-python or $VLLM_PYTHON, else this one; arguments
after -- go to vLLM); --engine transformers runs a small server of this project (one process, no
batching). Prints what it starts and a curl line to try. See docs/serving.md and flm_ext/serving.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from export_hf import add_tokenizer_flags  # noqa: E402  (tools/ is this script's folder)


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="exported folder, checkpoint root or iter_N folder")
    p.add_argument("--iteration", type=int, default=None, help="checkpoint iteration (default: the latest)")
    p.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs (or CPU processes) to shard over")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: the folder's)")
    p.add_argument("--engine-python", default=None, help="python with vLLM installed (default: $VLLM_PYTHON, "
                                                         "else this one)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="--engine transformers")
    p.add_argument("--device", default=None, help="--engine transformers: cpu, cuda (default: cuda when available)")
    p.add_argument("--trust-remote-code", action="store_true", help="serve an export whose model code is not "
                                                                   "this flm_ext's own (edited or another version)")
    add_tokenizer_flags(p, required=False)
    return p.parse_args(argv), extra


def main(argv=None) -> int:
    args, extra = parse_args(argv)
    import signal

    def stop(signum, frame):  # SystemExit: an export in progress removes its .partial folder
        print(f"serve: stopped by signal {signum}", file=sys.stderr, flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    from flm_ext.serving.cli import run

    return run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
