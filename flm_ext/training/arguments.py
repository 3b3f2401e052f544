"""Command-line flags for pretrain_flm.py (Megatron-LM's names) -> one validated `TrainConfig`.

Flags keep Megatron-LM's names wherever Megatron has the concept, so a Megatron user's launch
script reads the same; FLM-specific ones (`--model-preset`, xPos, µP, teacher signal, growth)
are added. Each flag is a field of the config it sets (flm_ext/flags.py): the model's are
`FLMConfig`'s and `ParallelConfig`'s, the data and tokenizer flags `DataConfig`'s, the optimizer's
`OptimConfig`'s (training/optim.py, which the engine imports without this module), the rest the
dataclasses here; `LaunchArgs` holds those read while building the config but not kept in it.
The parser is generated from the fields; everything is checked once in `TrainConfig.validate`,
and errors name the flag.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, replace

from flm_ext.config import ConfigError, FLMConfig, ParallelConfig, get_preset, pad_vocab_size, validate
from flm_ext.data.config import DataConfig
from flm_ext.flags import CheckpointStep, add_flags, flag, flag_names, flag_values, from_args
from flm_ext.training.optim import OptimConfig

LR_DECAY_STYLES = ("cosine", "linear", "constant")  # the styles the trainer's scheduler is tested with
RECOMPUTE_GRANULARITIES = ("selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")

# flm_ext.config names fields; the trainer's messages name the flag that sets them.
FIELD_FLAGS = flag_names(FLMConfig, ParallelConfig)
_FIELD_RE = re.compile(r"\b(" + "|".join(FIELD_FLAGS) + r")\b")


def with_flag_names(error: ConfigError) -> ConfigError:
    """The same error, with config field names replaced by the flags that set them."""
    return ConfigError(_FIELD_RE.sub(lambda m: FIELD_FLAGS[m.group(1)], str(error)))


# The schedule's counts in samples that may be given in iterations instead (x the global batch):
# samples field -> iterations flag (a `LaunchArgs` field).
ITERATION_FLAGS = {"train_samples": "train_iters", "lr_warmup_samples": "lr_warmup_iters"}


@dataclass(frozen=True)
class ScheduleConfig:
    """Batch sizes and the LR schedule, in samples (as FLM's table gives them)."""

    micro_batch_size: int = flag(cli_default=1)
    global_batch_size: int = flag()  # flag left out: micro batch x data-parallel size
    train_samples: int = flag()  # or --train-iters
    lr_warmup_samples: int = flag(0)
    lr_decay_samples: int | None = flag(None)  # None: decay over all train samples
    lr_decay_style: str = flag("cosine", choices=LR_DECAY_STYLES)
    lr_warmup_init: float = 0.0
    typed: tuple[str, ...] = ()  # the ITERATION_FLAGS given in iterations ("train_iters", "lr_warmup_iters")

    def in_iterations(self, name: str) -> bool:
        """Whether the count `name` was typed in iterations (--train-iters) rather than in samples."""
        return ITERATION_FLAGS.get(name) in self.typed

    def typed_flag(self, name: str) -> str:
        """The flag the user typed for `name`: its own, or its iterations flag (ITERATION_FLAGS)."""
        return "--" + (ITERATION_FLAGS[name] if self.in_iterations(name) else name).replace("_", "-")

    def flag(self, name: str) -> str:
        """`--flag=value` as the user typed it (--train-iters / --lr-warmup-iters are stored in samples)."""
        value = getattr(self, name)
        if self.in_iterations(name):
            return f"{self.typed_flag(name)}={value // self.global_batch_size} ({value} samples)"
        return f"{self.typed_flag(name)}={value}"

    def as_typed(self, name: str, samples: int) -> str:
        """`samples` for `name` in the user's flag: `--train-iters N` (rounded up) or `--train-samples N`."""
        count = math.ceil(samples / self.global_batch_size) if self.in_iterations(name) else samples
        return f"{self.typed_flag(name)} {count}"

    def num_microbatches(self, data_parallel_size: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * data_parallel_size)

    @property
    def train_iters(self) -> int:
        return math.ceil(self.train_samples / self.global_batch_size)


@dataclass(frozen=True)
class CheckpointArgs(CheckpointStep):  # --ckpt-step: load this iteration instead of the latest
    save: str | None = flag(None)
    load: str | None = flag(None)
    save_interval: int | None = flag(None)
    keep_last: int | None = flag(3, help="checkpoints to keep (0: all)")  # 0 is stored as None
    no_load_optim: bool = flag(False, help="load weights, iteration and LR schedule but start Adam's moments from zero")
    verify_checkpoint: bool = flag(True, help="skip the checksum check of the checkpoint's files before loading "
                                              "(safety checks stay)")
    finetune: bool = flag(False, help="load weights only; iteration and data restart at 0")  # Megatron's
    start_new_stage: bool = flag(False, help="load weights and optimizer moments (e.g. a grown checkpoint), but "
                                             "restart the iteration, data position and LR schedule at 0: the next "
                                             "FLM stage")
    override_opt_param_scheduler: bool = flag(
        False, name="--override-opt_param-scheduler", aliases=("--override-opt-param-scheduler",),
        help="on resume, apply the LR schedule of the flags (--lr, --min-lr, warm-up, decay) from the checkpoint's "
             "sample on, instead of refusing a schedule other than the checkpoint's")
    discard_newer_checkpoints: bool = flag(
        False, help="when the run starts from an iteration older than iterations already in --save (e.g. "
                    "--ckpt-step), remove those newer iterations at its first save instead of refusing")


@dataclass(frozen=True)
class LoggingArgs:
    """Console, TensorBoard and JSONL metrics; evaluation."""

    log_interval: int = flag(10)
    eval_interval: int | None = flag(None)
    eval_iters: int = flag(10)
    tensorboard_dir: str | None = flag(None)
    peak_tflops: float | None = flag(None, help="per-device peak for MFU")  # default by device type
    exit_interval: int | None = flag(None)  # stop (and save) after this many iterations of this run
    metrics_jsonl: str | None = flag(None, help="append a JSON line per logged step and evaluation "
                                                "(full-precision losses) to this file")


@dataclass(frozen=True)
class OperationsArgs:
    """Running for weeks: async / fully parallel saves, hang watchdog, time limit, loss spikes, W&B."""

    async_save: bool = flag(False, help="write checkpoints in a background process; the checkpoint becomes the "
                                        "latest only once every rank's files are complete and checksummed")
    ckpt_fully_parallel_save: bool = flag(  # FullyParallelSaveStrategyWrapper
        False, help="spread the writing of replicated tensors over the data-parallel replicas")
    distributed_timeout_minutes: int = flag(30, help="timeout of the process groups' collectives")
    hang_timeout_minutes: float | None = flag(
        None, help="watchdog: after this long without a finished step, name the late ranks, dump Python stacks and "
                   "exit non-zero (0: off; default 10, or a third of the process-group timeout when that is shorter)")
    exit_duration_in_mins: float | None = flag(
        None, help="save and exit 0 once the run has lasted this long (before an allocation ends)")
    loss_spike_factor: float | None = flag(
        None, help="log a finite loss above this x the running median as a spike, with its sample ids")
    loss_spike_window: int = flag(50, help="steps in the running median")
    loss_spike_rollback: bool = flag(False, help="on a spike, reload the latest checkpoint and skip the spike's "
                                                 "samples")
    wandb_project: str | None = flag(None, help="log to Weights & Biases (WANDB_MODE=offline works)")
    wandb_exp_name: str | None = flag(None)
    wandb_save_dir: str | None = flag(None)

    def validate(self, checkpoint: "CheckpointArgs") -> None:
        if self.distributed_timeout_minutes < 1:
            raise ConfigError(f"--distributed-timeout-minutes={self.distributed_timeout_minutes} must be >= 1")
        if self.hang_timeout_minutes is not None and not (
                0 <= self.hang_timeout_minutes < self.distributed_timeout_minutes):
            raise ConfigError(f"--hang-timeout-minutes={self.hang_timeout_minutes} must be >= 0 (0: off) and below "
                              f"--distributed-timeout-minutes={self.distributed_timeout_minutes}, or the process "
                              f"group times out first and nobody is named")
        if self.exit_duration_in_mins is not None and not self.exit_duration_in_mins > 0:
            raise ConfigError(f"--exit-duration-in-mins={self.exit_duration_in_mins} must be > 0")
        if self.loss_spike_factor is not None and not (self.loss_spike_factor > 1 and
                                                       math.isfinite(self.loss_spike_factor)):
            raise ConfigError(f"--loss-spike-factor={self.loss_spike_factor} must be a number > 1")
        if self.loss_spike_window < 3:
            raise ConfigError(f"--loss-spike-window={self.loss_spike_window} must be >= 3")
        if self.loss_spike_rollback and self.loss_spike_factor is None:
            raise ConfigError("--loss-spike-rollback needs --loss-spike-factor")
        if self.loss_spike_rollback and not checkpoint.save:
            raise ConfigError("--loss-spike-rollback needs --save (it rolls back to the latest checkpoint there)")
        if (self.async_save or self.ckpt_fully_parallel_save) and not checkpoint.save:
            option = "--async-save" if self.async_save else "--ckpt-fully-parallel-save"
            raise ConfigError(f"{option} needs --save")
        if self.wandb_exp_name is not None and not self.wandb_project:
            raise ConfigError("--wandb-exp-name needs --wandb-project")
        if self.wandb_project is not None and not self.wandb_project.strip():
            raise ConfigError("--wandb-project must not be empty")
        if self.wandb_project:
            import importlib.util

            if importlib.util.find_spec("wandb") is None:
                raise ConfigError("--wandb-project needs the wandb package: pip install '.[wandb]' (set "
                                  "WANDB_MODE=offline to log without a network)")

    @property
    def hang_timeout_s(self) -> float:
        """The watchdog's limit in seconds (0: off); by default 10 minutes, or a third of the process-group
        timeout when that is shorter, so the watchdog speaks well before the collectives time out."""
        if self.hang_timeout_minutes is not None:
            return 60.0 * self.hang_timeout_minutes
        return 60.0 * min(10.0, self.distributed_timeout_minutes / 3)

    @property
    def save_hang_timeout_s(self) -> float:
        """How long a save may keep the watchdog waiting: a big synchronous save may rightly take far
        longer than a step, but one stuck past 0.9 x the process-group timeout is named as a hang
        before the collectives time out and name nobody."""
        return max(self.hang_timeout_s, 0.9 * 60.0 * self.distributed_timeout_minutes)


@dataclass(frozen=True)
class TrainConfig:
    model: FLMConfig
    parallel: ParallelConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    data: DataConfig
    checkpoint: CheckpointArgs
    logging: LoggingArgs
    seed: int = flag(1234)
    bf16: bool = flag(False)
    recompute_granularity: str | None = flag(None, choices=RECOMPUTE_GRANULARITIES)  # None: no recompute
    recompute_method: str = flag("uniform", choices=RECOMPUTE_METHODS)
    recompute_num_layers: int = flag(1)
    max_consecutive_skips: int = flag(5, help="stop after this many steps in a row with a non-finite loss or "
                                              "gradient norm")
    growth_ramp_steps: int | None = flag(None, help="override the mask ramp length recorded in a grown checkpoint")
    dry_run: bool = flag(False, help="check the configuration for the world size, print layout, size and memory, "
                                     "exit")
    ops: OperationsArgs = OperationsArgs()

    def validate(self) -> None:
        try:
            validate(self.model, self.parallel)
        except ConfigError as error:
            raise with_flag_names(error) from None
        s, p = self.schedule, self.parallel
        for name in ("micro_batch_size", "global_batch_size", "train_samples"):
            if getattr(s, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(s, name)} must be >= 1")
        dp = p.data_parallel_size
        if dp < 1:
            raise ConfigError(f"world size {p.world_size} is smaller than --tensor-model-parallel-size x "
                              f"--pipeline-model-parallel-size = {p.model_parallel_size}")
        if s.global_batch_size % (s.micro_batch_size * dp):
            raise ConfigError(f"--global-batch-size={s.global_batch_size} is not divisible by --micro-batch-size "
                              f"x data-parallel size = {s.micro_batch_size} x {dp}")
        nmb = s.num_microbatches(dp)
        if p.virtual_pipeline_model_parallel_size and nmb % p.pipeline_model_parallel_size:
            raise ConfigError(f"interleaved pipeline needs the number of micro-batches ({nmb}) to be a multiple of "
                              f"--pipeline-model-parallel-size={p.pipeline_model_parallel_size}")
        if s.lr_decay_style not in LR_DECAY_STYLES:
            raise ConfigError(f"--lr-decay-style={s.lr_decay_style!r} must be one of {', '.join(LR_DECAY_STYLES)}")
        if s.lr_warmup_samples < 0:
            raise ConfigError(f"--lr-warmup-samples={s.lr_warmup_samples} must be >= 0")
        if s.lr_decay_samples is not None and s.lr_decay_samples < 1:
            raise ConfigError(f"--lr-decay-samples={s.lr_decay_samples} must be >= 1")
        if s.lr_warmup_samples >= (s.lr_decay_samples or s.train_samples):
            decay = s.flag("lr_decay_samples" if s.lr_decay_samples else "train_samples")
            raise ConfigError(f"{s.flag('lr_warmup_samples')} must be shorter than the decay ({decay})")
        if not 0.0 <= self.optim.min_lr <= self.optim.lr:
            raise ConfigError(f"--min-lr={self.optim.min_lr} must be in [0, --lr={self.optim.lr}]")
        self._validate_optimizer()
        self._validate_run()
        if self.recompute_granularity not in (None, *RECOMPUTE_GRANULARITIES):
            raise ConfigError(f"--recompute-granularity={self.recompute_granularity!r} must be one of "
                              f"{', '.join(RECOMPUTE_GRANULARITIES)}")
        self.data.validate(train=not self.dry_run)  # the data files are checked by the trainer's first step
        ck = self.checkpoint
        if ck.save_interval is not None and ck.save_interval < 1:
            raise ConfigError(f"--save-interval={ck.save_interval} must be >= 1")
        if ck.save_interval and not ck.save:
            raise ConfigError("--save-interval needs --save")
        if (ck.finetune or ck.start_new_stage) and not ck.load:
            raise ConfigError("--finetune / --start-new-stage need --load")
        if ck.finetune and ck.start_new_stage:
            raise ConfigError("give --finetune (weights only) or --start-new-stage (weights and optimizer), not both")
        if ck.keep_last is not None and ck.keep_last < 1:  # 0 was turned into None (keep all)
            raise ConfigError(f"--keep-last={ck.keep_last} must be >= 0 (0 keeps every checkpoint)")
        if self.growth_ramp_steps is not None and self.growth_ramp_steps < 0:
            raise ConfigError(f"--growth-ramp-steps={self.growth_ramp_steps} must be >= 0")
        self._validate_logging()
        self.ops.validate(ck)

    def _validate_optimizer(self) -> None:
        o = self.optim
        if not o.clip_grad >= 0:
            raise ConfigError(f"--clip-grad={o.clip_grad} must be >= 0 (0 disables gradient clipping)")
        if not o.weight_decay >= 0:
            raise ConfigError(f"--weight-decay={o.weight_decay} must be >= 0")
        for option, beta in (("--adam-beta1", o.adam_beta1), ("--adam-beta2", o.adam_beta2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{option}={beta} must be in [0, 1)")
        if not o.adam_eps > 0:
            raise ConfigError(f"--adam-eps={o.adam_eps} must be > 0")

    def _validate_run(self) -> None:
        """Flags about the run itself; --bf16 is checked against this machine (a dry run only plans)."""
        if self.max_consecutive_skips < 1:
            raise ConfigError(f"--max-consecutive-skips={self.max_consecutive_skips} must be >= 1")
        if self.recompute_num_layers < 1:
            raise ConfigError(f"--recompute-num-layers={self.recompute_num_layers} must be >= 1")
        if self.bf16 and not self.dry_run:
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--bf16 needs a GPU and CUDA is not available here: leave --bf16 out "
                                  "(CPU runs train in fp32)")

    def _validate_logging(self) -> None:
        lg = self.logging
        if lg.log_interval < 1:
            raise ConfigError(f"--log-interval={lg.log_interval} must be >= 1")
        if lg.eval_interval is not None and lg.eval_interval < 1:
            raise ConfigError(f"--eval-interval={lg.eval_interval} must be >= 1 (leave it out to skip evaluation)")
        if lg.eval_interval and lg.eval_iters < 1:
            raise ConfigError(f"--eval-iters={lg.eval_iters} must be >= 1 when --eval-interval is given")
        if lg.exit_interval is not None and lg.exit_interval < 1:
            raise ConfigError(f"--exit-interval={lg.exit_interval} must be >= 1")
        if lg.peak_tflops is not None and not lg.peak_tflops > 0:
            raise ConfigError(f"--peak-tflops={lg.peak_tflops} must be > 0")


@dataclass(frozen=True)
class LaunchArgs:
    """Flags read while the config is built, not kept in it: a preset, counts in iterations, the layout's
    virtual stages and world size, and what to do instead of training."""

    model_preset: str | None = flag(None, group="model",
                                    help="flm-16b, flm-51b, flm-101b, tiny-*; the model flags override it")
    train_iters: int | None = flag(None, group="training")  # stored as --train-samples = iterations x global batch
    lr_warmup_iters: int | None = flag(None, group="training")
    num_layers_per_virtual_pipeline_stage: int | None = flag(None, group="parallelism")
    recompute_activations: bool = flag(False, group="parallelism", help="selective recompute (attention core)")
    world_size: int | None = flag(None, group="parallelism", help="for --dry-run: the world size to check (default: "
                                                                  "WORLD_SIZE or NNODES x GPUS_PER_NODE)")
    check_config: bool = flag(False, group="training", help="check every flag as for training, for the world size, "
                                                            "and exit (the launchers run this once before torchrun)")


# --help sections: (title, the configs whose flags it lists). Every flag is a field of one of these configs.
GROUPS = (
    ("model", (FLMConfig,)),
    ("parallelism", (ParallelConfig,)),
    ("training", (ScheduleConfig, OptimConfig, TrainConfig)),
    ("data", (DataConfig,)),
    ("checkpointing", (CheckpointArgs,)),
    ("logging", (LoggingArgs,)),
    ("operations (long runs)", (OperationsArgs,)),
)


def build_parser() -> argparse.ArgumentParser:
    """pretrain_flm.py's parser, generated from the config dataclasses' flag fields (flm_ext/flags.py)."""
    p = argparse.ArgumentParser(prog="pretrain_flm.py", description="Pre-train an FLM model on megatron-core.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for title, _ in GROUPS:  # the sections in this order
        p.add_argument_group(title)
    add_flags(p, LaunchArgs)  # each of its fields names its section
    for title, configs in GROUPS:
        for config in configs:  # model flags override a preset only when given
            add_flags(p, config, group=title, unset=config is FLMConfig)
    return p


def model_config_from_args(args: argparse.Namespace) -> FLMConfig:
    overrides = flag_values(FLMConfig, args, given_only=True)
    if args.model_preset:
        base = get_preset(args.model_preset)
        if "hidden_size" in overrides and "ffn_hidden_size" not in overrides:
            overrides["ffn_hidden_size"] = 4 * overrides["hidden_size"]
        return base.replace(**overrides)
    missing = [f"--{k.replace('_', '-')}" for k in ("num_layers", "hidden_size", "num_attention_heads")
               if k not in overrides]
    if missing:
        raise ConfigError(f"give --model-preset or all of {', '.join(missing)}")
    return FLMConfig(**overrides)


def config_from_args(args: argparse.Namespace, world_size: int) -> TrainConfig:
    """Turn parsed flags into a validated TrainConfig (vocab padding from the tokenizer comes later)."""
    model = model_config_from_args(args)
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    vpp = None
    for name, least in (("train_iters", 1), ("lr_warmup_iters", 0), ("num_layers_per_virtual_pipeline_stage", 1),
                        ("world_size", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise ConfigError(f"--{name.replace('_', '-')}={value} must be >= {least}")
    if args.num_layers_per_virtual_pipeline_stage:
        per_stage = model.num_layers // pp
        if per_stage % args.num_layers_per_virtual_pipeline_stage:
            raise ConfigError(f"--num-layers-per-virtual-pipeline-stage={args.num_layers_per_virtual_pipeline_stage} "
                              f"does not divide the {per_stage} layers per pipeline stage")
        vpp = per_stage // args.num_layers_per_virtual_pipeline_stage
    parallel = from_args(ParallelConfig, args, virtual_pipeline_model_parallel_size=vpp, world_size=world_size)
    dp = max(1, world_size // max(1, tp * pp))
    gbs = args.global_batch_size or args.micro_batch_size * dp
    if args.train_samples is not None and args.train_iters is not None:
        raise ConfigError("give --train-samples or --train-iters, not both")
    if args.train_samples is None and args.train_iters is None:
        raise ConfigError("give --train-samples or --train-iters")
    counts = {samples: getattr(args, samples) if getattr(args, iters) is None else getattr(args, iters) * gbs
              for samples, iters in ITERATION_FLAGS.items()}
    recompute = args.recompute_granularity or ("selective" if args.recompute_activations else None)
    config = TrainConfig(
        model=model,
        parallel=parallel,
        optim=from_args(OptimConfig, args),
        schedule=from_args(ScheduleConfig, args, global_batch_size=gbs, **counts,
                           typed=tuple(f for f in ITERATION_FLAGS.values() if getattr(args, f) is not None)),
        data=from_args(DataConfig, args, data_path=list(args.data_path), vocab_from_tokenizer=args.vocab_size is None),
        checkpoint=from_args(CheckpointArgs, args, keep_last=args.keep_last or None),
        logging=from_args(LoggingArgs, args),
        ops=from_args(OperationsArgs, args),
        **{**flag_values(TrainConfig, args), "recompute_granularity": recompute},
    )
    config.validate()
    return config


def with_vocab(config: TrainConfig, tokenizer_vocab_size: int) -> TrainConfig:
    """Pad the tokenizer's vocabulary as Megatron does (to a multiple of 128 x TP), unless
    --vocab-size fixed it, in which case it must hold every token id."""
    if not config.data.vocab_from_tokenizer:
        if config.model.vocab_size < tokenizer_vocab_size:
            raise ConfigError(f"--vocab-size={config.model.vocab_size} is smaller than the tokenizer's "
                              f"{tokenizer_vocab_size} tokens")
        return config
    padded = pad_vocab_size(tokenizer_vocab_size, config.parallel.tensor_model_parallel_size,
                            config.data.make_vocab_size_divisible_by)
    return replace(config, model=config.model.replace(vocab_size=padded))
