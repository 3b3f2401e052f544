"""pretrain_flm.py's training with a finite loss spike injected at one step, for the loss-spike tests.

    python spike_run.py STEP FACTOR <pretrain_flm.py flags>
Before the step that completes iteration STEP, the final layer norm's weight is multiplied by
FACTOR (sharper logits: a finite, much higher loss); it is divided back before the next step
unless a rollback reloaded the weights in between.
"""
import sys
import warnings

warnings.filterwarnings("ignore")

from flm_ext.training.arguments import build_parser, config_from_args  # noqa: E402
from flm_ext.training.trainer import pretrain  # noqa: E402


class InjectSpike:
    def __init__(self, step: int, factor: float):
        self.step, self.factor, self.fired, self.pending = step, factor, False, None

    def _norm(self, chunks):
        return chunks[-1].module.decoder.final_layernorm.weight

    def on_load(self, common, *, restart, train_iters):
        self.pending = None  # the reloaded weights are clean

    def before_step(self, chunks, iteration):
        import torch

        with torch.no_grad():
            if self.pending is not None:
                self._norm(chunks).div_(self.factor)
                self.pending = None
            if iteration == self.step - 1 and not self.fired:
                self._norm(chunks).mul_(self.factor)
                self.fired, self.pending = True, iteration
                print(f"injected a spike before step {self.step}", flush=True)

    def checkpoint_state(self):
        return {}


if __name__ == "__main__":
    step, factor = int(sys.argv[1]), float(sys.argv[2])
    config = config_from_args(build_parser().parse_args(sys.argv[3:]), 1)
    print(pretrain(config, hooks=[InjectSpike(step, factor)]), flush=True)
