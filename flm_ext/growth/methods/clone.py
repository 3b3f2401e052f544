"""HyperCloning's width rule: every width times an integer, the old function kept with no masks.

The grown model's residual stream is the old one repeated n_h times ([h, h] for n_h = 2); new
heads are copies of the old heads in order (head H + i copies head i), new FFN units copies of
the old units. A linear layer whose input is repeated n times gets its old weight repeated along
both axes and divided by n (each output copy sums n identical halves); biases, LayerNorm gains
and biases and the embedding are repeated. LayerNorm of a repeated vector is the repeated
LayerNorm (same mean and variance), attention per head and GeLU per unit are untouched, so every
layer outputs the repeated old output. The logits: the untied output layer divides by n_h like
any linear layer; a tied embedding cannot (it also feeds the input), so the final LayerNorm's gain
and bias take the 1/n_h, together with µP's logits rescale (operators.GrowthPlan.logits_rescale).

`--clone-noise s` adds N(0, s^2) noise to every block of a weight whose input is repeated, centred
over the n copies so that the copies still sum to the old weight (HyperCloning's noisy variant):
the copies can then diverge in training, and the function is kept up to the rounding of the
stored noisy blocks. Exact in float64 without noise when the factors are powers of two.

Optimizer (the moments follow the gradients of the symmetric clone): a tensor's moments are
repeated and divided by the repeat factor of its output axis (its rows; the embedding's hidden
axis), exp_avg_sq by its square, because each copy of an output receives 1/n of the old gradient;
the final LayerNorm's by 1/(p n_h) with p its weight factor. Adam's step count is kept.
Depth is unchanged (use --method stack or msg).
"""
from __future__ import annotations

import torch

from flm_ext.growth.methods import GrowthMethod, nonnegative_float, register
from flm_ext.growth.operators import _FINAL_NORM, GrowthError, _check_role, _generator, _spec, old_layer

_EMBEDDING = "embedding.word_embeddings.weight"
_AXIS_SIZE = {"hidden": "hidden_size", "qkv": "num_attention_heads", "attn": "num_attention_heads",
              "ffn": "ffn_hidden_size"}


def factors(plan) -> dict[str, int]:
    """Repeat factor per axis kind."""
    out = {"vocab": 1}
    for axis, field in _AXIS_SIZE.items():
        before, after = getattr(plan.old, field), getattr(plan.new, field)
        if after % before:
            raise GrowthError(f"--method clone multiplies each width by an integer: {field} {before} -> {after} "
                              f"is not a multiple")
        out[axis] = after // before
    return out


class Clone(GrowthMethod):
    name = "clone"
    preserving = True
    options = {"clone_noise": 0.0}

    def _validate(self) -> None:
        self.settings["clone_noise"] = nonnegative_float("clone_noise", self.settings["clone_noise"])

    def check(self, plan):
        if plan.new.num_layers != plan.old.num_layers:
            raise GrowthError(f"--method clone grows width only: num_layers {plan.old.num_layers} -> "
                              f"{plan.new.num_layers}; deepen with --method stack, msg or random")
        factors(plan)

    @torch.no_grad()
    def grow_width(self, key, tensor, plan, role="param", layer=None):
        _check_role(role)
        axes, _ = _spec(key)
        old_shape, _ = plan.shapes(key)
        if tuple(tensor.shape) != old_shape:
            raise GrowthError(f"{key}: shape {tuple(tensor.shape)} is not the old config's {old_shape}")
        f = factors(plan)
        reps = [f[a] for a in axes]
        out = tensor.to(torch.float64).repeat(*reps)
        tied = plan.new.share_embeddings_and_output_weights
        if key in _FINAL_NORM:
            p = plan.logits_rescale / (f["hidden"] if tied else 1)
            g = 1.0 / (p * f["hidden"])
            scale = {"param": p, "exp_avg": g, "exp_avg_sq": g * g}[role]
        elif role == "param":
            n_in = reps[1] if len(reps) == 2 and key != _EMBEDDING else 1
            scale = 1.0 / n_in
            if n_in > 1 and self.settings["clone_noise"] > 0:
                out += self._noise(key, plan, layer, out.shape[0], n_in, old_shape[1])
        else:
            n_out = reps[1] if key == _EMBEDDING else reps[0]
            scale = 1.0 / (n_out if role == "exp_avg" else n_out ** 2)
        if scale != 1.0:
            out *= scale
        return out.to(tensor.dtype)

    def _noise(self, key, plan, layer, rows, n_in, cols) -> torch.Tensor:
        """Noise for the n_in column blocks that sums to 0 over the blocks (pre-scaled by n_in: the
        block is then divided by n_in as a whole)."""
        z = torch.empty(rows, n_in, cols, dtype=torch.float32).normal_(
            0.0, self.settings["clone_noise"], generator=_generator(plan, key, layer)).double()
        z -= z.mean(dim=1, keepdim=True)
        return (z * n_in).reshape(rows, n_in * cols)

    def grow_layer(self, key, old_layers, plan, layer, role="param", dtype=None):
        return self.grow_width(key, old_layer(old_layers, layer), plan, role, layer=layer)


register(Clone)
