"""Command-line flags for pretrain_flm.py (Megatron-LM's names) -> one validated `TrainConfig`.

Flags keep Megatron-LM's names wherever Megatron has the concept, so a Megatron user's launch
script reads the same; FLM-specific ones (`--model-preset`, xPos, µP, teacher signal, growth)
are added. Parsing produces plain typed dataclasses; everything is checked once in
`TrainConfig.validate`, and errors name the flag.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, replace

from flm_ext.config import (POSITION_EMBEDDINGS, ConfigError, FLMConfig, ParallelConfig, get_preset, pad_vocab_size,
                            validate)
from flm_ext.data.config import DataConfig
from flm_ext.data.tokenizers import TOKENIZER_TYPES
from flm_ext.training.engine import OptimConfig

LR_DECAY_STYLES = ("cosine", "linear", "constant")  # the styles the trainer's scheduler is tested with
RECOMPUTE_GRANULARITIES = ("selective", "full")
RECOMPUTE_METHODS = ("uniform", "block")

# flm_ext.config names fields; the trainer's messages name the flag that sets them.
FIELD_FLAGS = {
    "num_layers": "--num-layers", "hidden_size": "--hidden-size", "num_attention_heads": "--num-attention-heads",
    "ffn_hidden_size": "--ffn-hidden-size", "seq_length": "--seq-length", "vocab_size": "--vocab-size",
    "position_embedding": "--position-embedding-type", "rotary_base": "--rotary-base",
    "xpos_scale_base": "--xpos-scale-base", "init_method_std": "--init-method-std",
    "hidden_dropout": "--hidden-dropout", "attention_dropout": "--attention-dropout",
    "mup_base_width": "--mup-base-width", "mup_input_mult": "--mup-input-mult", "mup_output_mult": "--mup-output-mult",
    "tensor_model_parallel_size": "--tensor-model-parallel-size",
    "pipeline_model_parallel_size": "--pipeline-model-parallel-size", "sequence_parallel": "--sequence-parallel",
}
_FIELD_RE = re.compile(r"\b(" + "|".join(FIELD_FLAGS) + r")\b")


def with_flag_names(error: ConfigError) -> ConfigError:
    """The same error, with config field names replaced by the flags that set them."""
    return ConfigError(_FIELD_RE.sub(lambda m: FIELD_FLAGS[m.group(1)], str(error)))


@dataclass(frozen=True)
class ScheduleConfig:
    """Batch sizes and the LR schedule, in samples (as FLM's table gives them)."""

    micro_batch_size: int
    global_batch_size: int
    train_samples: int
    lr_warmup_samples: int = 0
    lr_decay_samples: int | None = None  # None: decay over all train samples
    lr_decay_style: str = "cosine"  # one of LR_DECAY_STYLES
    lr_warmup_init: float = 0.0
    typed: tuple[str, ...] = ()  # the flags given in iterations ("train_iters", "lr_warmup_iters")

    def flag(self, name: str) -> str:
        """`--flag=value` as the user typed it (--train-iters / --lr-warmup-iters are stored in samples)."""
        value = getattr(self, name)
        iters = {"train_samples": "train_iters", "lr_warmup_samples": "lr_warmup_iters"}.get(name)
        if iters in self.typed:
            return f"--{iters.replace('_', '-')}={value // self.global_batch_size} ({value} samples)"
        return f"--{name.replace('_', '-')}={value}"

    def num_microbatches(self, data_parallel_size: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * data_parallel_size)

    @property
    def train_iters(self) -> int:
        return math.ceil(self.train_samples / self.global_batch_size)


DataArgs = DataConfig  # the data flags: one config, defined and validated in the data layer


@dataclass(frozen=True)
class CheckpointArgs:
    save: str | None = None
    load: str | None = None
    save_interval: int | None = None
    keep_last: int | None = 3
    no_load_optim: bool = False
    finetune: bool = False  # Megatron's: load weights only; iteration, data and schedule restart at 0
    start_new_stage: bool = False  # FLM stages: weights + Adam moments; iteration, data and schedule restart
    ckpt_step: int | None = None  # Megatron's --ckpt-step: load this iteration instead of the latest
    verify_checkpoint: bool = True  # checksums of the manifest before a load
    override_opt_param_scheduler: bool = False  # Megatron's: a resume takes the flags' LR schedule
    discard_newer_checkpoints: bool = False  # resuming an older iteration may remove --save's newer ones


@dataclass(frozen=True)
class LoggingArgs:
    log_interval: int = 10
    eval_interval: int | None = None
    eval_iters: int = 10
    tensorboard_dir: str | None = None
    peak_tflops: float | None = None  # per device; default by device type
    exit_interval: int | None = None  # stop (and save) after this many iterations of this run
    metrics_jsonl: str | None = None  # one JSON line per logged step / evaluation, full precision


@dataclass(frozen=True)
class OperationsArgs:
    """Running for weeks: async / fully parallel saves, hang watchdog, time limit, loss spikes, W&B."""

    async_save: bool = False  # megatron-core's async torch_dist save: training goes on while files are written
    ckpt_fully_parallel_save: bool = False  # each DP replica writes a share (FullyParallelSaveStrategyWrapper)
    distributed_timeout_minutes: int = 30  # the process groups' timeout (Megatron's flag)
    hang_timeout_minutes: float | None = None  # watchdog: no finished step this long -> name late ranks, exit; 0 off
    exit_duration_in_mins: float | None = None  # save and exit 0 once the run has lasted this long
    loss_spike_factor: float | None = None  # a loss above this x the running median is a spike
    loss_spike_window: int = 50  # steps in the running median
    loss_spike_rollback: bool = False  # on a spike: reload the latest checkpoint and skip the spike's batch
    wandb_project: str | None = None
    wandb_exp_name: str | None = None
    wandb_save_dir: str | None = None

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
            flag = "--async-save" if self.async_save else "--ckpt-fully-parallel-save"
            raise ConfigError(f"{flag} needs --save")
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


@dataclass(frozen=True)
class TrainConfig:
    model: FLMConfig
    parallel: ParallelConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    data: DataConfig
    checkpoint: CheckpointArgs
    logging: LoggingArgs
    seed: int = 1234
    bf16: bool = False
    recompute_granularity: str | None = None  # None | "selective" | "full"
    recompute_method: str = "uniform"
    recompute_num_layers: int = 1
    max_consecutive_skips: int = 5
    growth_ramp_steps: int | None = None  # overrides the value recorded by grow_checkpoint.py
    dry_run: bool = False
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
        for flag, beta in (("--adam-beta1", o.adam_beta1), ("--adam-beta2", o.adam_beta2)):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{flag}={beta} must be in [0, 1)")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pretrain_flm.py", description="Pre-train an FLM model on megatron-core.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_flags(p.add_argument_group("model"))
    _add_parallel_flags(p.add_argument_group("parallelism"))
    _add_training_flags(p.add_argument_group("training"))

    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=[], help="[weight] prefix [weight] prefix ...")
    g.add_argument("--split", default="969,30,1")
    g.add_argument("--teacher-data-path", default=None, help="prefix written by preprocess_data.py --teacher-signal")
    g.add_argument("--teacher-fraction", type=float, default=0.0, help="share of every global batch")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--num-workers", type=int, default=0)
    g.add_argument("--tokenizer-type", default=None,
                   choices=TOKENIZER_TYPES)
    g.add_argument("--vocab-file", default=None)
    g.add_argument("--merge-file", default=None)
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)

    g = p.add_argument_group("checkpointing")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--keep-last", type=int, default=3, help="checkpoints to keep (0: all)")
    g.add_argument("--no-load-optim", action="store_true",
                   help="load weights, iteration and LR schedule but start Adam's moments from zero")
    g.add_argument("--ckpt-step", type=int, default=None,
                   help="load this iteration of --load instead of the one its latest marker names")
    g.add_argument("--no-verify-checkpoint", dest="verify_checkpoint", action="store_false",
                   help="skip the checksum check of the checkpoint's files before loading (safety checks stay)")
    g.add_argument("--finetune", action="store_true", help="load weights only; iteration and data restart at 0")
    g.add_argument("--start-new-stage", action="store_true",
                   help="load weights and optimizer moments (e.g. a grown checkpoint), but restart the iteration, "
                        "data position and LR schedule at 0: the next FLM stage")
    g.add_argument("--override-opt_param-scheduler", "--override-opt-param-scheduler",
                   dest="override_opt_param_scheduler", action="store_true",
                   help="on resume, apply the LR schedule of the flags (--lr, --min-lr, warm-up, decay) from the "
                        "checkpoint's sample on, instead of refusing a schedule other than the checkpoint's")
    g.add_argument("--discard-newer-checkpoints", action="store_true",
                   help="when the run starts from an iteration older than iterations already in --save (e.g. "
                        "--ckpt-step), remove those newer iterations at its first save instead of refusing")

    _add_logging_flags(p.add_argument_group("logging"))
    _add_operations_flags(p.add_argument_group("operations (long runs)"))
    return p


def _add_operations_flags(g) -> None:
    """Long runs: saves that do not stop training, hangs and time limits, loss spikes, W&B."""
    g.add_argument("--async-save", action="store_true",
                   help="write checkpoints in a background process; the checkpoint becomes the latest only "
                        "once every rank's files are complete and checksummed")
    g.add_argument("--ckpt-fully-parallel-save", action="store_true",
                   help="spread the writing of replicated tensors over the data-parallel replicas")
    g.add_argument("--distributed-timeout-minutes", type=int, default=30,
                   help="timeout of the process groups' collectives")
    g.add_argument("--hang-timeout-minutes", type=float, default=None,
                   help="watchdog: after this long without a finished step, name the late ranks, dump Python "
                        "stacks and exit non-zero (0: off; default 10, or a third of the process-group timeout "
                        "when that is shorter)")
    g.add_argument("--exit-duration-in-mins", type=float, default=None,
                   help="save and exit 0 once the run has lasted this long (before an allocation ends)")
    g.add_argument("--loss-spike-factor", type=float, default=None,
                   help="log a finite loss above this x the running median as a spike, with its sample ids")
    g.add_argument("--loss-spike-window", type=int, default=50, help="steps in the running median")
    g.add_argument("--loss-spike-rollback", action="store_true",
                   help="on a spike, reload the latest checkpoint and skip the spike's samples")
    g.add_argument("--wandb-project", default=None, help="log to Weights & Biases (WANDB_MODE=offline works)")
    g.add_argument("--wandb-exp-name", default=None)
    g.add_argument("--wandb-save-dir", default=None)


def _add_model_flags(g) -> None:
    """Architecture: a preset and the flags that override it."""
    g.add_argument("--model-preset", default=None, help="flm-16b, flm-51b, flm-101b, tiny-*; flags below override it")
    g.add_argument("--num-layers", type=int)
    g.add_argument("--hidden-size", type=int)
    g.add_argument("--num-attention-heads", type=int)
    g.add_argument("--ffn-hidden-size", type=int)
    g.add_argument("--seq-length", type=int)
    g.add_argument("--position-embedding-type", choices=POSITION_EMBEDDINGS, dest="position_embedding")
    g.add_argument("--rotary-base", type=int)
    g.add_argument("--xpos-scale-base", type=int)
    g.add_argument("--init-method-std", type=float)
    g.add_argument("--hidden-dropout", type=float)
    g.add_argument("--attention-dropout", type=float)
    g.add_argument("--use-mup", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--mup-base-width", type=int)
    g.add_argument("--mup-input-mult", type=float)
    g.add_argument("--mup-output-mult", type=float)
    g.add_argument("--vocab-size", type=int, help="padded vocabulary size (default: from the tokenizer)")
    g.add_argument("--scale-attn-by-inverse-layer-idx", action=argparse.BooleanOptionalAction, default=None,
                   help="the released FLM-101B config's flag: divide layer l's attention scores by l (docs/FLM.md 7)")


def _add_parallel_flags(g) -> None:
    """Layout and memory: TP/PP/VPP/SP, distributed optimizer, recompute, world size."""
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--recompute-activations", action="store_true", help="selective recompute (attention core)")
    g.add_argument("--recompute-granularity", choices=RECOMPUTE_GRANULARITIES, default=None)
    g.add_argument("--recompute-method", choices=RECOMPUTE_METHODS, default="uniform")
    g.add_argument("--recompute-num-layers", type=int, default=1)
    g.add_argument("--world-size", type=int, default=None,
                   help="for --dry-run: the world size to check (default: WORLD_SIZE or NNODES x GPUS_PER_NODE)")


def _add_training_flags(g) -> None:
    """Batch, schedule, optimizer, precision and run control."""
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int, default=None)
    g.add_argument("--train-samples", type=int, default=None)
    g.add_argument("--train-iters", type=int, default=None)
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", default="cosine", choices=LR_DECAY_STYLES)
    g.add_argument("--lr-warmup-samples", type=int, default=0)
    g.add_argument("--lr-warmup-iters", type=int, default=None)
    g.add_argument("--lr-decay-samples", type=int, default=None)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.95)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--max-consecutive-skips", type=int, default=5,
                   help="stop after this many steps in a row with a non-finite loss or gradient norm")
    g.add_argument("--growth-ramp-steps", type=int, default=None,
                   help="override the mask ramp length recorded in a grown checkpoint")
    g.add_argument("--dry-run", action="store_true",
                   help="check the configuration for the world size, print layout, size and memory, exit")
    g.add_argument("--check-config", action="store_true",
                   help="check every flag as for training, for the world size, and exit (the launchers run "
                        "this once before torchrun)")


def _add_logging_flags(g) -> None:
    """Console, TensorBoard and JSONL metrics; evaluation."""
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--eval-interval", type=int, default=None)
    g.add_argument("--eval-iters", type=int, default=10)
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--peak-tflops", type=float, default=None, help="per-device peak for MFU")
    g.add_argument("--exit-interval", type=int, default=None)
    g.add_argument("--metrics-jsonl", default=None,
                   help="append a JSON line per logged step and evaluation (full-precision losses) to this file")


MODEL_FLAGS = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "seq_length",
               "position_embedding", "rotary_base", "xpos_scale_base", "init_method_std", "hidden_dropout",
               "attention_dropout", "use_mup", "mup_base_width", "mup_input_mult", "mup_output_mult", "vocab_size")
MODEL_FLAGS += ("scale_attn_by_inverse_layer_idx",)


def model_config_from_args(args: argparse.Namespace) -> FLMConfig:
    overrides = {k: getattr(args, k) for k in MODEL_FLAGS if getattr(args, k) is not None}
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
    for flag in ("train_iters", "lr_warmup_iters", "num_layers_per_virtual_pipeline_stage", "world_size"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "lr_warmup_iters" else 1):
            raise ConfigError(f"--{flag.replace('_', '-')}={value} must be >= {0 if flag == 'lr_warmup_iters' else 1}")
    if args.num_layers_per_virtual_pipeline_stage:
        per_stage = model.num_layers // pp
        if per_stage % args.num_layers_per_virtual_pipeline_stage:
            raise ConfigError(f"--num-layers-per-virtual-pipeline-stage={args.num_layers_per_virtual_pipeline_stage} "
                              f"does not divide the {per_stage} layers per pipeline stage")
        vpp = per_stage // args.num_layers_per_virtual_pipeline_stage
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              virtual_pipeline_model_parallel_size=vpp, sequence_parallel=args.sequence_parallel,
                              world_size=world_size)
    dp = max(1, world_size // max(1, tp * pp))
    gbs = args.global_batch_size or args.micro_batch_size * dp
    if args.train_samples is not None and args.train_iters is not None:
        raise ConfigError("give --train-samples or --train-iters, not both")
    if args.train_samples is None and args.train_iters is None:
        raise ConfigError("give --train-samples or --train-iters")
    train_samples = args.train_samples if args.train_samples is not None else args.train_iters * gbs
    warmup = args.lr_warmup_samples if args.lr_warmup_iters is None else args.lr_warmup_iters * gbs
    recompute = args.recompute_granularity or ("selective" if args.recompute_activations else None)
    config = TrainConfig(
        model=model,
        parallel=parallel,
        optim=OptimConfig(lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
                          adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
                          clip_grad=args.clip_grad, use_distributed_optimizer=args.use_distributed_optimizer),
        schedule=ScheduleConfig(micro_batch_size=args.micro_batch_size, global_batch_size=gbs,
                                train_samples=train_samples, lr_warmup_samples=warmup,
                                lr_decay_samples=args.lr_decay_samples, lr_decay_style=args.lr_decay_style,
                                typed=tuple(f for f in ("train_iters", "lr_warmup_iters")
                                            if getattr(args, f) is not None)),
        data=DataConfig(data_path=list(args.data_path), split=args.split, teacher_data_path=args.teacher_data_path,
                        teacher_fraction=args.teacher_fraction, data_cache_path=args.data_cache_path,
                        tokenizer_type=args.tokenizer_type, vocab_file=args.vocab_file, merge_file=args.merge_file,
                        tokenizer_model=args.tokenizer_model,
                        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                        vocab_from_tokenizer=args.vocab_size is None, num_workers=args.num_workers),
        checkpoint=CheckpointArgs(save=args.save, load=args.load, save_interval=args.save_interval,
                                  keep_last=args.keep_last or None, no_load_optim=args.no_load_optim,
                                  finetune=args.finetune, start_new_stage=args.start_new_stage,
                                  ckpt_step=args.ckpt_step, verify_checkpoint=args.verify_checkpoint,
                                  override_opt_param_scheduler=args.override_opt_param_scheduler,
                                  discard_newer_checkpoints=args.discard_newer_checkpoints),
        logging=LoggingArgs(log_interval=args.log_interval, eval_interval=args.eval_interval,
                            eval_iters=args.eval_iters, tensorboard_dir=args.tensorboard_dir,
                            peak_tflops=args.peak_tflops, exit_interval=args.exit_interval,
                            metrics_jsonl=args.metrics_jsonl),
        seed=args.seed, bf16=args.bf16, recompute_granularity=recompute, recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers, max_consecutive_skips=args.max_consecutive_skips,
        growth_ramp_steps=args.growth_ramp_steps, dry_run=args.dry_run,
        ops=OperationsArgs(**{f: getattr(args, f) for f in OperationsArgs.__dataclass_fields__}),
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
