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
import sys

from flm_ext.data.tokenizers import TokenizerConfig
from flm_ext.export.options import ModelSource
from flm_ext.flags import CheckpointStep, add_flags
from flm_ext.serving.options import SOURCE_HELP, ServeArgs


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # what follows -- goes to vLLM
    argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, ModelSource, help=SOURCE_HELP)
    for config in (CheckpointStep, ServeArgs, TokenizerConfig):
        add_flags(p, config)
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
