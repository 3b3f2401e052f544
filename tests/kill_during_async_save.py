"""Child process for the async-save kill tests: publish an async save of iteration 1, then start an
async save of iteration 2 whose writer hangs after writing its shards (before its checksums are
handed back), and keep "training" until SIGKILLed.

    python kill_during_async_save.py CKPT_DIR
Prints "saved 1", then "async save 2 in flight" once the writer child is hanging.
"""
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")

from flm_ext.checkpoint import async_save  # noqa: E402
from flm_ext.checkpoint import training_io  # noqa: E402
from kill_during_save import CFG, build, remember_weights_then_change_them  # noqa: E402
from flm_ext.config import ParallelConfig  # noqa: E402
from flm_ext.runtime import initialize_distributed  # noqa: E402


def main(root: str) -> None:
    initialize_distributed(ParallelConfig(), seed=7, rank=0, world_size=1)
    model, optimizer = build()
    saver = async_save.CheckpointSaver(async_save=True, fully_parallel=False)
    saver.save(root, 1, model, optimizer, None, record=training_io.trainer_record(1, CFG, 8), keep=None)
    assert saver.finalize(blocking=True) == [f"{root}/iter_0000001"]
    remember_weights_then_change_them(model, root)
    real_side_file = async_save._write_side_file

    def hang_after_writing(partial, rank):  # runs in the forked writer
        open(os.path.join(os.path.dirname(partial), "writer_hanging"), "w").close()
        time.sleep(600)
        real_side_file(partial, rank)

    async_save._write_side_file = hang_after_writing
    saver.save(root, 2, model, optimizer, None, record=training_io.trainer_record(2, CFG, 16), keep=None)
    while not os.path.exists(os.path.join(root, "writer_hanging")):
        time.sleep(0.05)
    print("async save 2 in flight", flush=True)
    while True:  # training goes on while the writer works
        assert saver.finalize(blocking=False) == []
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1])
