"""What a restart costs, measured on the real stage-1 launcher in rehearsal (FLM_REHEARSAL=1, CPU):
two "nodes" on localhost, one worker kill -9'ed after a checkpoint, and the time from the kill until
(1) both launchers have torn the attempt down and announce the restart, (2) the first training step
of the resumed run. Also the steps redone (kill point minus the checkpoint resumed from).

    python benchmarks/restart_cost.py --out runs/restart_cost

The data is what the rehearsal builds for itself (no DATA_PATH), once, in OUT/data.
"""
import argparse
import os
import queue
import re
import subprocess
import sys
import threading
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = re.compile(r"^step +(\d+)/\d+ \|")


def _reader(proc, rank, lines):
    for line in proc.stdout:
        lines.put((time.time(), rank, line.rstrip()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/restart_cost")
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    tag = f"restart-cost-{os.getpid()}"
    env = dict(os.environ, FLM_REHEARSAL="1", PYTHON=sys.executable, NNODES="2", GPUS_PER_NODE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT="29710", CKPT=os.path.join(out, "ckpt"),
               REHEARSAL_DATA=os.path.join(out, "data"), REHEARSAL_STEPS=str(args.steps), FLM_BENCH_TAG=tag,
               PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    lines: queue.Queue = queue.Queue()
    procs = []
    for rank in range(2):
        proc = subprocess.Popen(["bash", os.path.join(REPO, "examples", "flm101b_stage1.sh")], cwd=out,
                                env=dict(env, NODE_RANK=str(rank)), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=_reader, args=(proc, rank, lines), daemon=True).start()
        procs.append(proc)
    marker = os.path.join(out, "ckpt", "latest_checkpointed_iteration.txt")
    last_step, killed = 0, None
    restarts, resumed = {}, None
    while any(p.poll() is None for p in procs) or not lines.empty():
        try:
            t, rank, line = lines.get(timeout=0.05)
        except queue.Empty:
            t, rank, line = time.time(), None, ""
        match = STEP.match(line)
        if match:
            step = int(match.group(1))
            if killed and resumed is None and restarts:
                resumed = (t, step)
            last_step = step
        if "restart 1 of" in line:
            restarts[rank] = t
        if killed is None and os.path.exists(marker) and int(open(marker).read().strip() or 0) >= 4:
            victims = [q for q in psutil.process_iter() if _is_worker(q, tag)]
            if victims:
                saved = int(open(marker).read().strip())
                for victim in victims:
                    victim.kill()
                killed = (time.time(), last_step, saved)
                print(f"killed rank 1 at step {last_step} (latest checkpoint: iteration {saved})", flush=True)
    codes = [p.wait() for p in procs]
    if killed is None or resumed is None or codes != [0, 0]:
        print(f"no complete measurement: exit codes {codes}, killed {killed}, resumed {resumed}", file=sys.stderr)
        return 1
    t_kill, at_step, saved = killed
    teardown = max(restarts.values()) - t_kill
    print(f"kill -> both launchers restart: {teardown:.1f} s (includes RESTART_DELAY's start only)")
    print(f"kill -> first step of the resumed run: {resumed[0] - t_kill:.1f} s (step {resumed[1]})")
    print(f"steps redone: {at_step - saved} (killed after step {at_step}, resumed from iteration {saved})")
    return 0


def _is_worker(proc, tag) -> bool:
    try:
        environ = proc.environ()
        return (environ.get("FLM_BENCH_TAG") == tag and environ.get("RANK") == "1"
                and any(part.endswith("pretrain_flm.py") for part in proc.cmdline()))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


if __name__ == "__main__":
    sys.exit(main())
