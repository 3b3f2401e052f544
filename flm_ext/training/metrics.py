"""Throughput accounting and log sinks (console lines + TensorBoard scalars).

FLOPs per step = tokens x (6 N + 12 L h s): the 6N of a dense forward + backward plus the
attention score and context products (Megatron's model-FLOPs convention, no recomputation counted),
N = parameter count. The schedule planner (flm_ext/planning.py) uses the same function; see
docs/FLM.md section 2 for why this convention reproduces the paper's days.
MFU = achieved FLOP/s per device / the device's peak (dense bf16), which `--peak-tflops`
overrides; on a CPU no peak is assumed and MFU is not reported.
"""
from __future__ import annotations

import json
import math
import os

import torch

from flm_ext.config import FLMConfig, num_parameters

# Dense bf16 peaks (TFLOP/s) by device-name fragment.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}


def flops_per_token(model: FLMConfig, *, attention: bool = True, recompute: bool = False) -> float:
    """Training FLOPs per token: 6 N (+ 12 L a s for the attention products, a = heads x head size).

    `attention=False` gives the bare 6N rule. `recompute=True` counts full activation
    recomputation, one more forward of the layers (2 N_layers + 4 L a s): the hardware FLOPs a
    recomputing run executes, against the model FLOPs it is credited with by default.
    """
    layers, seq = model.num_layers, model.seq_length
    attn = model.attention_width
    flops = 6.0 * num_parameters(model) + (12.0 * layers * attn * seq if attention else 0.0)
    if recompute:
        embedding = model.vocab_size * model.hidden_size * (1 if model.share_embeddings_and_output_weights else 2)
        layer_params = num_parameters(model) - embedding - 2 * model.hidden_size
        flops += 2.0 * layer_params + (4.0 * layers * attn * seq if attention else 0.0)
    return flops


def default_peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


class MetricsWriter:
    """TensorBoard scalars and/or a JSON-lines file, written by rank 0 (no-op elsewhere)."""

    def __init__(self, tensorboard_dir: str | None, jsonl_path: str | None, rank: int):
        self.writer = self.jsonl = None
        self.rank0, self.sinks = rank == 0, []
        if rank != 0:
            return
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(tensorboard_dir, exist_ok=True)
            self.writer = SummaryWriter(log_dir=tensorboard_dir)
        if jsonl_path:
            os.makedirs(os.path.dirname(os.path.abspath(jsonl_path)), exist_ok=True)
            self.jsonl = open(jsonl_path, "a")

    def add_sink(self, sink) -> None:
        """Another destination for the same scalars (e.g. `WandbSink`); rank 0 only, like the others."""
        if self.rank0:
            self.sinks.append(sink)

    def scalars(self, step: int, values: dict) -> None:
        for sink in self.sinks:
            sink.log(step, {k: v for k, v in values.items() if v is not None and math.isfinite(v)})
        if self.writer is not None:
            for key, value in values.items():
                if value is not None and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"iteration": step, **values}) + "\n")
            self.jsonl.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


class WandbSink:
    """Weights & Biases (`--wandb-project`, `--wandb-exp-name`, `--wandb-save-dir`: Megatron's flags).

    wandb is the optional extra `wandb`; WANDB_MODE=offline writes the run under the save dir
    without a network (upload it later with `wandb sync`)."""

    def __init__(self, project: str, name: str | None, save_dir: str | None, config: dict):
        try:
            import wandb
        except ImportError:
            raise ImportError("--wandb-project needs the wandb package: pip install '.[wandb]'") from None
        if save_dir:
            os.makedirs(save_dir, exist_ok=True)
        self.run = wandb.init(project=project, name=name, dir=save_dir, config=config)

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()
