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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flm_ext import quiet_megatron_import_warnings  # noqa: E402
from flm_ext.fileio import stop_cleanly_on_sigterm  # noqa: E402

quiet_megatron_import_warnings()
from flm_ext.config import ConfigError  # noqa: E402
from flm_ext.growth.offline import GrowCheckpointError, grow_checkpoint  # noqa: E402
from flm_ext.growth.methods import get_method, method_names  # noqa: E402
from flm_ext.growth.operators import DEPTH_INITS, DEPTH_PLACEMENTS, GrowthError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="checkpoint root (with latest_checkpointed_iteration.txt) or iter_N")
    p.add_argument("--save", required=True, help="new checkpoint root; must not exist")
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--num-attention-heads", type=int, default=None)
    p.add_argument("--ffn-hidden-size", type=int, default=None)
    p.add_argument("--method", choices=method_names(), default="msg", help="growth operator (docs/growth.md)")
    p.add_argument("--depth-init", choices=DEPTH_INITS, default=None,
                   help="msg: new layers copy old ones (stack, default) or start fresh (random)")
    p.add_argument("--depth-placement", choices=DEPTH_PLACEMENTS, default=None,
                   help="msg, stack, random: new layers after the old stack (top, default) or each after the "
                        "layer it copies (interleave)")
    p.add_argument("--stack-factor", type=int, default=None,
                   help="stack: the grown model has this many times the old layers (G_stack's g, >= 2)")
    p.add_argument("--clone-noise", type=float, default=None,
                   help="clone: std of the noise added to the cloned weight blocks, cancelling over the copies "
                        "(default 0)")
    p.add_argument("--growth-ramp-steps", type=int, default=1000,
                   help="steps over which the trainer ramps the masks from 0 to 1")
    p.add_argument("--seed", type=int, default=0, help="seed of the new weights' init")
    p.add_argument("--bucket-mb", type=int, default=256, help="bytes per output file (bounds memory with the "
                                                               "largest tensor chunk)")
    p.add_argument("--workers", type=int, default=1, help="processes growing and writing the output files in "
                                                          "parallel (memory: --bucket-mb each; same bytes as 1)")
    p.add_argument("--progress-interval", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--verify", action="store_true", help="compare old and grown logits on a probe batch")
    p.add_argument("--tolerance", type=float, default=1e-5)
    return p.parse_args(argv)



class VerifyFailed(Exception):
    """--verify measured a logit difference above --tolerance."""


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.tolerance >= 0:  # NaN too
        print(f"grow_checkpoint: error: --tolerance {args.tolerance:g} must be >= 0", file=sys.stderr, flush=True)
        return 2
    stop_cleanly_on_sigterm("grow")
    sizes = dict(num_layers=args.num_layers, hidden_size=args.hidden_size,
                 num_attention_heads=args.num_attention_heads, ffn_hidden_size=args.ffn_hidden_size)
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
        diff = report["max_abs_logit_diff"]
        print(f"max abs logit diff: {diff:.3e}", flush=True)
        print(f"loss jump: {report['loss_jump']:+.4e} (probe loss {report['old_loss']:.4f} -> {report['new_loss']:.4f}"
              f"{'' if method.preserving else f'; --method {method.name} does not preserve the function'})",
              flush=True)
        if method.preserving and not diff <= args.tolerance:
            raise VerifyFailed(f"the grown model's logits differ by {diff:.3e} > --tolerance {args.tolerance:g}; "
                               f"the grown checkpoint was removed (nothing at {args.save})")

    try:
        method = get_method(args.method, **{k: v for k, v in knobs.items() if v is not None})
        grow_checkpoint(args.load, args.save, sizes, method=method, seed=args.seed, ramp_steps=args.growth_ramp_steps,
                        bucket_bytes=args.bucket_mb * 2 ** 20, log=log, progress_interval=args.progress_interval,
                        check=verify if args.verify else None, workers=args.workers)
    except (GrowCheckpointError, GrowthError, ConfigError) as e:
        print(f"grow_checkpoint: error: {e}", file=sys.stderr, flush=True)
        return 2
    except VerifyFailed as e:
        print(f"grow_checkpoint: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
