"""Child process for the kill-during-save test: save iteration 1, then hang inside the save of
iteration 2 (after its shards are written, before it is made the latest) until SIGKILLed.

    python kill_during_save.py CKPT_DIR
Prints "saved 1" and then "hanging in save 2" on stdout.
"""
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402

from flm_ext.config import FLMConfig, ParallelConfig  # noqa: E402
from flm_ext.model.flm_model import build_model_chunks  # noqa: E402
from flm_ext.runtime import initialize_distributed  # noqa: E402
from flm_ext.checkpoint import training_io  # noqa: E402
from flm_ext.training.engine import build_optimizer, wrap_ddp  # noqa: E402
from flm_ext.training.optim import OptimConfig  # noqa: E402

CFG = FLMConfig(num_layers=2, hidden_size=32, num_attention_heads=2, seq_length=16, vocab_size=128)


def build():
    model = wrap_ddp(build_model_chunks(CFG))
    return model, build_optimizer(model, CFG, OptimConfig())


def remember_weights_then_change_them(model, root: str) -> None:
    """After the save of iteration 1: keep its weights for the test, then change them for iteration 2."""
    torch.save({k: v.clone() for k, v in model[0].module.state_dict().items() if v is not None},
               f"{root}/weights_at_1.pt")
    print("saved 1", flush=True)
    with torch.no_grad():
        for p in model[0].parameters():
            p.add_(1.0)  # iteration 2 has different weights


def check_iteration_1_loads(root) -> None:
    """In the test process: the latest checkpoint under `root` is iteration 1 and loads with its weights."""
    model, optimizer = build()
    with torch.no_grad():
        for p in model[0].parameters():
            p.add_(5.0)  # whatever the fresh weights were, only the load can bring back iteration 1's
    record = training_io.load_checkpoint(str(root), model, optimizer, None).record
    assert record.iteration == 1 and record.consumed_train_samples == 8, record
    want = torch.load(f"{root}/weights_at_1.pt")
    got = model[0].module.state_dict()
    assert want and all(torch.equal(got[name], tensor) for name, tensor in want.items())


def main(root: str) -> None:
    initialize_distributed(ParallelConfig(), seed=7, rank=0, world_size=1)
    model, optimizer = build()
    training_io.save_checkpoint(root, 1, model, optimizer, None, record=training_io.trainer_record(1, CFG, 8))
    remember_weights_then_change_them(model, root)
    real_save = training_io.dist_checkpointing.save

    def save_then_hang(*args, **kwargs):
        real_save(*args, **kwargs)
        print("hanging in save 2", flush=True)
        time.sleep(600)

    training_io.dist_checkpointing.save = save_then_hang
    training_io.save_checkpoint(root, 2, model, optimizer, None, record=training_io.trainer_record(2, CFG, 16))


def synchronous_save_worker(rank: int, world_size: int, out_dir: str) -> None:
    """For `spawn()`: a synchronous CheckpointSaver save with megatron's forked per-bucket writers
    made to fail if used; the test then loads iteration 1 (`check_iteration_1_loads`)."""
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

    from flm_ext.checkpoint.async_save import CheckpointSaver

    def forked_writers(*args, **kwargs):
        raise AssertionError("a synchronous save used megatron's forked writers")

    FileSystemWriterAsync.write_preloaded_data_multiproc = staticmethod(forked_writers)
    initialize_distributed(ParallelConfig(), seed=7)
    model, optimizer = build()
    saver = CheckpointSaver(async_save=False, fully_parallel=False)
    saver.save(out_dir, 1, model, optimizer, None, record=training_io.trainer_record(1, CFG, 8), keep=None)
    remember_weights_then_change_them(model, out_dir)


if __name__ == "__main__":
    main(sys.argv[1])
