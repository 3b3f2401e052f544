"""A torchrun worker whose save after SIGTERM takes a while, as the trainer's does at 101B scale.

    slow_save_worker.py OUT SECONDS: writes OUT/ready_<rank>, waits for SIGTERM, then builds
    OUT/ckpt_<rank> over SECONDS (in OUT/ckpt_<rank>.partial, renamed when complete).
"""
import os
import signal
import sys
import time

from flm_ext.fileio import building

out, seconds = sys.argv[1], float(sys.argv[2])
rank = os.environ["RANK"]
stop = []
signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
open(os.path.join(out, f"ready_{rank}"), "w").close()
while not stop:
    time.sleep(0.05)
with building(os.path.join(out, f"ckpt_{rank}")) as partial:
    for part in range(10):
        with open(os.path.join(partial, f"part{part}"), "w") as f:
            f.write("x")
        time.sleep(seconds / 10)
