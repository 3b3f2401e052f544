#!/usr/bin/env python3
"""Grow a training checkpoint (default MSG, function-preserving), e.g. FLM's 16B -> 51B -> 101B:

  python tools/grow_checkpoint.py --load checkpoints/flm-16b --save checkpoints/flm-51b-grown \\
      --hidden-size 10240 --num-attention-heads 80 --ffn-hidden-size 40960 --growth-ramp-steps 1000
  python tools/grow_checkpoint.py --load checkpoints/flm-51b --save checkpoints/flm-101b-grown \\
      --num-layers 80 --depth-init stack

--method picks the operator (docs/growth.md): msg (masks, width and depth), stack (G_stack's depth
stacking, --stack-factor), clone (HyperCloning's width rule, --clone-noise) or random (new parts
randomly initialised, no masks: the baseline).

Reads a torch_dist checkpoint saved at any TP/PP and writes one the trainer loads at any TP/PP,
tensor by tensor (memory: a few of the largest tensors, not the model). Sizes not given are kept.
--verify builds both models on this machine (TP=1, float64), runs a probe batch and prints
`max abs logit diff: <value>` and `loss jump: <value>` before the grown checkpoint is published:
for a function-preserving method (msg, clone) a difference above --tolerance exits 1 and the grown
files are removed (nothing at --save). See flm_ext/growth/offline.py and flm_ext/growth/verify.py.
"""
import argparse
import gc
import os
import sys

gc.disable()  # importing torch and its checkpoint package makes ~400k objects: no collections meanwhile
from flm_ext import quiet_megatron_import_warnings  # noqa: E402
from flm_ext.fileio import read_ahead, stop_cleanly_on_sigterm  # noqa: E402


def _read_input_ahead(argv: list[str]):
    """Start reading --load's shards while torch is imported (~2 s in which the disk would sit
    idle; paths only, no torch yet): the growth then checks and reads them from memory. At most a
    quarter of the free memory is read ahead. Nothing is reported here: a bad --load is named by
    the real open below."""
    from flm_ext.checkpoint.layout import CheckpointError, resolve

    load = next((b for a, b in zip(argv, argv[1:]) if a == "--load"), None)
    load = next((a.split("=", 1)[1] for a in argv if a.startswith("--load=")), load)
    try:
        folder, _ = resolve(load)
        names = sorted(os.listdir(folder))
    except (CheckpointError, OSError, TypeError, ValueError):
        return None
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    return read_ahead([os.path.join(folder, n) for n in names if n.endswith(".distcp")], limit=free // 4)


if __name__ == "__main__":
    _read_input_ahead(sys.argv[1:])

quiet_megatron_import_warnings()
from flm_ext.config import ConfigError, FLMConfig  # noqa: E402
from flm_ext.flags import VerifyArgs, add_flags, from_args  # noqa: E402
from flm_ext.growth.methods import get_method  # noqa: E402
from flm_ext.growth.offline import GrowCheckpointError, grow_checkpoint  # noqa: E402
from flm_ext.growth.operators import GrowthError  # noqa: E402
from flm_ext.growth.options import GROWN_SIZES, GrowArgs  # noqa: E402

gc.freeze()  # the imported objects are never traversed again
gc.enable()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, FLMConfig, only=GROWN_SIZES, unset=True)  # sizes not given are kept
    add_flags(p, GrowArgs)
    add_flags(p, VerifyArgs)
    return p.parse_args(argv)


class VerifyFailed(Exception):
    """--verify measured a logit difference above --tolerance."""


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check = from_args(VerifyArgs, args)
    except ValueError as e:  # --tolerance
        print(f"grow_checkpoint: error: {e}", file=sys.stderr, flush=True)
        return 2
    stop_cleanly_on_sigterm("grow")
    sizes = {name: getattr(args, name) for name in GROWN_SIZES}
    log = lambda message: print(message, flush=True)  # noqa: E731
    knobs = dict(depth_init=args.depth_init, depth_placement=args.depth_placement, stack_factor=args.stack_factor,
                 clone_noise=args.clone_noise)

    def verify(partial: str) -> None:
        """On the finished <save>.partial, before it is renamed: a failure leaves nothing at --save.
        megatron is imported only here: growing the checkpoint does not need it."""
        from flm_ext.growth.verify import verify_report
        from flm_ext.runtime import init_single_process

        init_single_process()
        report = verify_report(args.load, partial)
        failure = check.judge(report["max_abs_logit_diff"], "the grown model's logits", log, figures=report)
        print(f"loss jump: {report['loss_jump']:+.4e} (probe loss {report['old_loss']:.4f} -> {report['new_loss']:.4f}"
              f"{'' if method.preserving else f'; --method {method.name} does not preserve the function'})",
              flush=True)
        if method.preserving and failure:
            raise VerifyFailed(f"{failure}; the grown checkpoint was removed (nothing at {args.save})")

    try:
        method = get_method(args.method, **{k: v for k, v in knobs.items() if v is not None})
        grow_checkpoint(args.load, args.save, sizes, method=method, seed=args.seed, ramp_steps=args.growth_ramp_steps,
                        bucket_bytes=args.bucket_mb * 2 ** 20, log=log, progress_interval=args.progress_interval,
                        check=verify if check.verify else None, workers=args.workers)
    except (GrowCheckpointError, GrowthError, ConfigError) as e:
        print(f"grow_checkpoint: error: {e}", file=sys.stderr, flush=True)
        return 2
    except VerifyFailed as e:
        print(f"grow_checkpoint: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # everything is written and closed: skip tearing down torch's objects (~1 s of CPU)
