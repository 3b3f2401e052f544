"""Pre-train an FLM model on megatron-core (Megatron-LM's flag names; see --help).

    torchrun --nproc-per-node 8 --nnodes 24 ... pretrain_flm.py --model-preset flm-16b ...
    python pretrain_flm.py --model-preset flm-101b --tensor-model-parallel-size 4 \\
        --pipeline-model-parallel-size 4 --world-size 192 --global-batch-size 2160 --train-iters 1 --dry-run
"""
import os
import sys
import warnings

# megatron-core announces its fallbacks when transformer-engine / apex are absent (always on CPU).
warnings.filterwarnings("ignore", message=r".*(Transformer Engine|Apex) .*not installed")


def main(argv=None) -> int:
    from flm_ext.config import ConfigError
    from flm_ext.training.arguments import build_parser, config_from_args

    args = build_parser().parse_args(argv)
    world_size = args.world_size or int(os.environ.get("WORLD_SIZE") or
                                        int(os.environ.get("NNODES", 1)) * int(os.environ.get("GPUS_PER_NODE", 1)))
    try:
        config = config_from_args(args, world_size)
    except ConfigError as error:
        print(f"pretrain_flm.py: configuration error: {error}", file=sys.stderr)
        return 2
    if config.dry_run:
        from flm_ext.training.dry_run import report

        print(report(config))
        print("dry run: configuration OK")
        return 0
    from flm_ext.training.checkpointing import CheckpointError
    from flm_ext.training.trainer import TrainingError, pretrain

    from flm_ext.runtime import destroy_distributed

    try:
        pretrain(config)
    except (ConfigError, TrainingError, CheckpointError) as error:
        print(f"pretrain_flm.py: {error}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed()  # leaving gloo's threads to interpreter exit can abort the process
    return 0


if __name__ == "__main__":  # the async checkpoint writer re-imports __main__: keep this guard
    sys.exit(main())
