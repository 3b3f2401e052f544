"""Pre-train an FLM model on megatron-core (Megatron-LM's flag names; see --help).

    torchrun --nproc-per-node 8 --nnodes 24 ... pretrain_flm.py --model-preset flm-16b ...
    python pretrain_flm.py --model-preset flm-101b --tensor-model-parallel-size 4 \\
        --pipeline-model-parallel-size 4 --world-size 192 --global-batch-size 2160 --train-iters 1 --dry-run
"""
import faulthandler
import importlib.util
import os
import signal
import sys


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _say_error(message: str) -> None:
    """Errors every rank would hit alike are printed once, by rank 0; the other ranks exit quietly."""
    if _is_rank0():
        print(f"pretrain_flm.py: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if _is_rank0() and not {"-h", "--help"} & set(argv):
        print("pretrain_flm.py: loading torch and megatron-core ...", flush=True)  # the imports take seconds
    if importlib.util.find_spec("torch") is None:
        _say_error(f"torch is not installed for {sys.executable}: run `make setup` and use .venv/bin/python "
                   "(or set PYTHON for the launchers)")
        return 2
    from flm_ext import quiet_megatron_import_warnings

    quiet_megatron_import_warnings()
    from flm_ext.config import ConfigError
    from flm_ext.training.arguments import build_parser, config_from_args

    args = build_parser().parse_args(argv)
    world_size = args.world_size or int(os.environ.get("WORLD_SIZE") or
                                        int(os.environ.get("NNODES", 1)) * int(os.environ.get("GPUS_PER_NODE", 1)))
    try:
        config = config_from_args(args, world_size)
    except ConfigError as error:
        _say_error(f"configuration error: {error}")
        return 2
    if config.dry_run:
        from flm_ext.training.dry_run import report

        print(report(config))
        print("dry run: configuration OK")
        return 0
    if args.check_config:  # the launchers' check before torchrun: flags, then data and tokenizer files
        try:
            config.data.check_files()
        except ConfigError as error:
            _say_error(f"configuration error: {error}")
            return 2
        print(f"pretrain_flm.py: configuration OK for world size {world_size}", flush=True)
        return 0
    return _train(config)


def _train(config) -> int:
    from flm_ext.config import ConfigError
    from flm_ext.runtime import destroy_distributed
    from flm_ext.checkpoint import CheckpointError
    from flm_ext.growth.ramp import GrowthRamp
    from flm_ext.training.trainer import TrainingError, pretrain

    try:
        pretrain(config, hooks=[GrowthRamp(config.growth_ramp_steps)])  # MSG masks of a grown checkpoint
    except ConfigError as error:  # found once the tokenizer and process group exist: the same on every rank
        _say_error(f"configuration error: {error}")
        return 2
    except (TrainingError, CheckpointError) as error:
        print(f"pretrain_flm.py: {error}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed()  # leaving gloo's threads to interpreter exit can abort the process
    return 0


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` prints this rank's Python stacks to its stderr (where stderr is a file)."""
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, OSError, ValueError):  # no SIGUSR1, or a stderr without a descriptor
        pass


if __name__ == "__main__":  # the async checkpoint writer re-imports __main__: keep this guard
    _stacks_on_sigusr1()
    sys.exit(main())
