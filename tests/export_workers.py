"""Checkpoints for the export tests, saved by the trainer's own save at TP=2 and PP=2 (importable by
spawned gloo processes) and at TP=1 inside an MSG growth ramp."""
from __future__ import annotations

import dataclasses
import os

import torch

from flm_ext.config import FLMConfig, ParallelConfig

# init_method_std 0.6 (greedy decoding does not settle into one repeated token) and perturbed LayerNorms / biases: logits of order 1 and every tensor matters.
BASE = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=64,
                 vocab_size=384, init_method_std=0.6)
MUP = BASE.replace(use_mup=True, mup_base_width=16, mup_input_mult=1.5, mup_output_mult=3.0)
# Width (hidden, heads, FFN) and depth (a third layer) growth of MUP, saved at lambda 0.4.
GROWN = MUP.replace(num_layers=3, hidden_size=48, num_attention_heads=6, ffn_hidden_size=96,
                    mup_width_mult_override=2.0, init_method_std=0.3)
LAYOUTS = {  # name -> (config, layout)
    "tp2_mup": (MUP, ParallelConfig(tensor_model_parallel_size=2)),
    "pp2": (BASE, ParallelConfig(pipeline_model_parallel_size=2)),
}
RAMP = dict(start_iteration=0, ramp_steps=10, iteration=4)  # lambda = 4 / 10


def perturbed_chunks(cfg: FLMConfig, layout: ParallelConfig, seed: int):
    """This rank's model chunks with noise on every parameter (LayerNorm gains and biases included)."""
    from flm_ext.model.flm_model import build_model_chunks

    chunks = build_model_chunks(cfg, layout)
    g = torch.Generator().manual_seed(seed + 1000 * torch.distributed.get_rank())
    with torch.no_grad():
        for chunk in chunks:
            for p in chunk.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return chunks


def save_layouts(rank, world_size, out_dir):
    """Both parallel layouts, one after the other, each to out_dir/<name>."""
    from megatron.core import parallel_state

    from flm_ext.runtime import initialize_distributed
    from flm_ext.checkpoint.training_io import save_checkpoint, trainer_record

    for index, (name, (cfg, layout)) in enumerate(LAYOUTS.items()):
        if index:
            parallel_state.destroy_model_parallel()
        initialize_distributed(dataclasses.replace(layout, world_size=world_size), seed=7 + index)
        chunks = perturbed_chunks(cfg, layout, seed=index)
        save_checkpoint(os.path.join(out_dir, name), 5, chunks, None, None, record=trainer_record(5, cfg, 0))


def save_ramp(root: str) -> None:
    """A TP=1 checkpoint of GROWN inside its growth ramp (in this process's TP=PP=1 megatron state)."""
    from flm_ext.growth.state import AxisChange, GrowthState
    from flm_ext.checkpoint.training_io import save_checkpoint, trainer_record

    state = GrowthState((AxisChange("hidden", 32, 48), AxisChange("heads", 4, 6, unit=3 * 8), AxisChange("ffn", 64, 96),
                         AxisChange("layers", 2, 3, positions=(1,))), RAMP["ramp_steps"], RAMP["start_iteration"])
    chunks = perturbed_chunks(GROWN, ParallelConfig(), seed=3)
    save_checkpoint(root, RAMP["iteration"], chunks, None, None,
                    record=trainer_record(RAMP["iteration"], GROWN, 0, growth=state.to_dict()))


def tp_plan_logits(rank, world_size, out_dir, folder):
    """The export loaded by transformers' own tensor-parallel loading (tp_plan="auto", gloo on CPU):
    its logits on a probe batch and the local shapes of the sharded projections."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, tp_plan="auto").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(ids).logits
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    shapes = {name: tuple(getattr(p, "_local_tensor", p).shape) for name, p in
              (("qkv", attn.qkv_proj.weight), ("o", attn.o_proj.weight), ("fc1", mlp.fc1.weight), ("fc2", mlp.fc2.weight))}
    logits = getattr(logits, "full_tensor", lambda: logits)()
    torch.save({"logits": logits, "shapes": shapes, "ids": ids}, os.path.join(out_dir, f"rank{rank}.pt"))
