"""Operating a long run (docs/operations.md): the launchers' restart loop and clean stop, torchrun's
flags, --no-FLAG, the FLM_REHEARSAL=1 switch, the sbatch script, and - slow, for real on CPU - the
stage-1 launcher as two "nodes" on localhost, with a worker kill -9'ed mid-run and with a SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from distributed import free_port
from tiny_data import ENV, losses

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# A stand-in interpreter: `--check-config` passes; a torchrun call is recorded (its argv, NUL-separated,
# and its FLM_LAUNCH_ID) and exits with the next code in $CODES_FILE; code "term" waits for SIGTERM and
# then exits 0 (a clean stop); "grow" also writes the stage's latest-checkpoint marker. Recording holds a
# lock: concurrent "nodes" appending without it interleaved their lines.
FAKE_PYTHON = r"""#!/bin/bash
for a in "$@"; do [[ "$a" == --check-config ]] && exit 0; done
if [[ "$1" == */tools/torchrun.py ]]; then
  exec 9>>"$RECORD.lock"; flock 9  # the sbatch tests start one launcher per "node" at once
  { printf '%s\0' "$FLM_LAUNCH_ID" "$@"; echo; } >> "$RECORD"
  code=$(head -n 1 "$CODES_FILE"); sed -i 1d "$CODES_FILE"; code=${code:-0}
  flock -u 9; exec 9>&-
  case "$code" in
    term) trap 'echo stopped >> "$RECORD.stops"; exit 0' TERM; touch "$RECORD.ready"; while :; do sleep 0.05; done ;;
    grow) mkdir -p "$CKPT" && echo 5 > "$CKPT/latest_checkpointed_iteration.txt"; exit 1 ;;
    *) exit "$code" ;;
  esac
fi
exit 0
"""


def _fake(tmp_path: Path, codes: list[str]) -> dict:
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "codes").write_text("".join(f"{c}\n" for c in codes))
    return dict(ENV, PYTHON=str(fake), RECORD=str(tmp_path / "record"), CODES_FILE=str(tmp_path / "codes"),
                RESTART_DELAY="0", CKPT=str(tmp_path / "ckpt"), NNODES="24", GPUS_PER_NODE="8", NODE_RANK="3")


def _torchrun_calls(tmp_path: Path) -> list[list[str]]:
    record = tmp_path / "record"
    if not record.exists():
        return []
    return [line.split("\0")[:-1] for line in record.read_text().splitlines()]


def _launch(script: str, env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(EXAMPLES / script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_a_dead_worker_restarts_the_job_up_to_max_restarts(tmp_path):
    env = _fake(tmp_path, ["1", "137", "0"])
    proc = _launch("flm101b_stage3.sh", env)
    assert proc.returncode == 0, proc.stderr
    calls = _torchrun_calls(tmp_path)
    assert len(calls) == 3
    ports = [call[call.index("--master-port") + 1] for call in calls]
    assert ports == ["6000", "6001", "6002"]  # a fresh rendezvous for each attempt
    assert len({call[0] for call in calls}) == 3  # each attempt its own FLM_LAUNCH_ID (orphans are found by it)
    assert "restart 1 of 3" in proc.stderr and "restart 2 of 3" in proc.stderr

    (tmp_path / "x").mkdir()
    env = _fake(tmp_path / "x", ["1", "1", "1"])
    proc = _launch("flm101b_stage3.sh", dict(env, MAX_RESTARTS="2"))
    assert proc.returncode == 1 and len(_torchrun_calls(tmp_path / "x")) == 3
    assert "after 2 restart(s) (MAX_RESTARTS=2): giving up" in proc.stderr


def test_a_grown_stage_restarts_from_its_own_checkpoint_once_it_has_one(tmp_path):
    env = _fake(tmp_path, ["grow", "0"])
    assert _launch("flm101b_stage2.sh", dict(env, GROWN=str(tmp_path / "grown"))).returncode == 0
    first, second = _torchrun_calls(tmp_path)
    assert first[first.index("--load") + 1] == str(tmp_path / "grown") and "--start-new-stage" in first
    assert second[second.index("--load") + 1] == str(tmp_path / "ckpt") and "--start-new-stage" not in second


def test_a_stop_signal_is_passed_on_and_never_restarted(tmp_path):
    env = _fake(tmp_path, ["term", "0"])
    proc = subprocess.Popen(["bash", str(EXAMPLES / "flm101b_stage1.sh")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 30
    while not (tmp_path / "record.ready").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (tmp_path / "record.stops").read_text() == "stopped\n" and len(_torchrun_calls(tmp_path)) == 1


def test_torchrun_flags_go_to_torchrun_and_no_flag_removes_a_switch(tmp_path):
    env = _fake(tmp_path, ["0"])
    proc = _launch("flm101b_stage3.sh", env, "--max-restarts", "2", "--rdzv_backend=c10d", "--no-bf16",
                   "--no-sequence-parallel", "--lr", "1e-4")
    assert proc.returncode == 0, proc.stderr
    (call,) = _torchrun_calls(tmp_path)
    script = call.index(str(REPO / "pretrain_flm.py"))
    assert call[1].endswith("tools/torchrun.py")
    assert call[call.index("--max-restarts") + 1] == "2" and call.index("--max-restarts") < script
    assert "--rdzv_backend=c10d" in call[:script]
    trainer = call[script + 1:]
    assert "--bf16" not in trainer and "--sequence-parallel" not in trainer and "--no-bf16" not in trainer
    assert "--use-distributed-optimizer" in trainer and trainer[-2:] == ["--lr", "1e-4"]
    assert "--max-restarts" not in trainer


@pytest.mark.parametrize("var, value", [("MAX_RESTARTS", "three"), ("NNODES", "-1"), ("SAVE_INTERVAL", "1e3"),
                                        ("FLM_REHEARSAL", "yes")])
def test_bad_launcher_variables_are_one_line_exit_2(tmp_path, var, value):
    env = _fake(tmp_path, ["0"])
    proc = _launch("flm101b_stage1.sh", dict(env, **{var: value}))
    assert proc.returncode == 2 and var in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not _torchrun_calls(tmp_path)


def test_a_torchrun_flag_without_its_value_is_one_line_exit_2(tmp_path):
    proc = _launch("flm101b_stage1.sh", _fake(tmp_path, ["0"]), "--lr", "1e-4", "--max-restarts")
    assert proc.returncode == 2 and proc.stderr.strip() == "flm101b_stage1.sh: torchrun flag --max-restarts needs a value"
    assert not _torchrun_calls(tmp_path)


def test_rehearsal_shape_of_every_stage(tmp_path):
    """FLM_REHEARSAL=1: bf16 and sequence parallelism dropped, the tiny mirror preset, TP1 x PP1, one
    process per node, a few steps; the real stage flags are still there (and lose to the rehearsal's)."""
    for stage, preset in ((1, "tiny-stage1"), (2, "tiny-stage2"), (3, "tiny-stage3")):
        out = tmp_path / str(stage)
        out.mkdir()
        env = _fake(out, ["0"])
        del env["GPUS_PER_NODE"], env["CKPT"]
        proc = subprocess.run(["bash", str(EXAMPLES / f"flm101b_stage{stage}.sh")], capture_output=True, text=True,
                              env=dict(env, FLM_REHEARSAL="1", NNODES="2", NODE_RANK="1", DATA_PATH="1 /d/x"),
                              cwd=out, timeout=60)
        assert proc.returncode == 0, proc.stderr
        (call,) = _torchrun_calls(out)
        assert call[call.index("--nproc-per-node") + 1] == "1" and call[call.index("--node-rank") + 1] == "1"
        args = call[call.index(str(REPO / "pretrain_flm.py")) + 1:]

        def last(flag):
            return args[len(args) - 1 - args[::-1].index(flag) + 1]
        assert "--bf16" not in args and "--sequence-parallel" not in args
        assert last("--model-preset") == preset and last("--tensor-model-parallel-size") == "1"
        assert last("--pipeline-model-parallel-size") == "1" and int(last("--train-samples")) == 8 * 8
        assert last("--save") == "rehearsal/checkpoints/" + {1: "flm-16b", 2: "flm-51b", 3: "flm-101b"}[stage]


def test_launchers_save_interval_is_the_planners():
    """Each stage launcher's default --save-interval is the planner's Young interval for that stage."""
    from flm_ext.failures import LAUNCHER_SCRIPTS, failure_plan

    for script, row in zip(LAUNCHER_SCRIPTS, failure_plan()["stages"]):
        text = (EXAMPLES / script).read_text()
        assert f"SAVE_INTERVAL=${{SAVE_INTERVAL:-{row['save_interval_steps']}}}" in text, script


# --- for real, on CPU: the stage-1 launcher as two "nodes" on localhost --------------------------------

STEPS = 12


def _rehearsal_env(data: dict, run: Path, tag: str, port: int, **extra) -> dict:
    return dict(ENV, FLM_REHEARSAL="1", PYTHON=sys.executable, PATH="/usr/bin:/bin", CKPT=str(run / "ckpt"),
                DATA_PATH=f"0.535 {data['en']} 0.465 {data['zh']}", TOKENIZER_TYPE="HuggingFaceTokenizer",
                TOKENIZER_MODEL=data["tokenizer"], MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                REHEARSAL_STEPS=str(STEPS), RESTART_DELAY="1", FLM_TEST_TAG=tag, **extra)


def _start_nodes(data: dict, run: Path, nodes: int, per_node: int, **extra) -> tuple[list, str]:
    run.mkdir(parents=True, exist_ok=True)
    tag, port = uuid.uuid4().hex, free_port()
    procs = []
    for rank in range(nodes):
        env = _rehearsal_env(data, run, tag, port, NNODES=str(nodes), NODE_RANK=str(rank),
                             GPUS_PER_NODE=str(per_node), **extra)
        procs.append(subprocess.Popen(
            ["bash", str(EXAMPLES / "flm101b_stage1.sh"), "--metrics-jsonl", str(run / "metrics.jsonl"),
             "--data-cache-path", data["cache"]],
            stdout=open(run / f"node{rank}.log", "w"), stderr=subprocess.STDOUT, env=env, cwd=run))
    return procs, tag


def _wait(procs, run: Path, timeout: float = 540) -> list[int]:
    codes = [p.wait(timeout=timeout) for p in procs]
    return codes


def _log(run: Path) -> str:
    return "\n".join((run / f"node{i}.log").read_text() for i in range(2) if (run / f"node{i}.log").exists())


def _tagged(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLM_TEST_TAG") == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _latest(run: Path) -> int:
    marker = run / "ckpt" / "latest_checkpointed_iteration.txt"
    try:
        return int(marker.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


@pytest.fixture(scope="module")
def one_node(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("one_node")
    procs, tag = _start_nodes(data, run, 1, 2)
    assert _wait(procs, run) == [0], _log(run)[-4000:]
    return losses(run / "metrics.jsonl")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on an idle machine; a loaded 2-core one takes several times that
def test_two_nodes_on_localhost_give_the_losses_of_one_node(data, one_node, tmp_path):
    procs, tag = _start_nodes(data, tmp_path, 2, 1)
    assert _wait(procs, tmp_path) == [0, 0], _log(tmp_path)[-4000:]
    two = losses(tmp_path / "metrics.jsonl")
    assert sorted(two) == list(range(1, STEPS + 1)) and sorted(one_node) == sorted(two)
    assert max(abs(two[i] - one_node[i]) for i in two) <= 1e-6, (one_node, two)
    assert not _tagged(tag)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on an idle machine; a loaded 2-core one takes several times that
def test_a_worker_killed_mid_run_restarts_by_itself_to_the_same_final_loss(data, one_node, tmp_path):
    """Two "nodes"; once a checkpoint past the first exists, node 1's worker is kill -9'ed. Both
    launchers restart torchrun by themselves, resume from the newest complete checkpoint and finish:
    the final loss is the uninterrupted run's (within 1e-6), and no process of the run is left."""
    procs, tag = _start_nodes(data, tmp_path, 2, 1)
    deadline = time.time() + 400
    while _latest(tmp_path) < 4:
        assert time.time() < deadline and all(p.poll() is None for p in procs), _log(tmp_path)[-4000:]
        time.sleep(0.05)
    victims = [p for p in _tagged(tag) if p.environ().get("RANK") == "1"
               and any(part.endswith("pretrain_flm.py") for part in p.cmdline())]
    assert victims, "no worker of rank 1 running: the run ended before the kill"
    killed_at = _latest(tmp_path)
    for victim in victims:
        victim.kill()
    assert _wait(procs, tmp_path) == [0, 0], _log(tmp_path)[-4000:]
    log = _log(tmp_path)
    assert log.count("restart 1 of 3") == 2, log[-4000:]  # each node's launcher restarted once
    assert killed_at < STEPS and _latest(tmp_path) == STEPS
    resumed = losses(tmp_path / "metrics.jsonl")
    assert abs(resumed[STEPS] - one_node[STEPS]) <= 1e-6, (resumed[STEPS], one_node[STEPS])
    time.sleep(1)
    assert not _tagged(tag), [p.cmdline() for p in _tagged(tag)]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on an idle machine; a loaded 2-core one takes several times that
def test_sigterm_saves_and_every_node_exits_0(data, one_node, tmp_path):
    """scancel / a SLURM time limit: every node's launcher gets SIGTERM; the workers finish their step,
    save, and every launcher exits 0 (not torchrun's 1); the run then resumes to the same final loss."""
    procs, tag = _start_nodes(data, tmp_path, 2, 1)
    deadline = time.time() + 400
    while _latest(tmp_path) < 2:
        assert time.time() < deadline and all(p.poll() is None for p in procs), _log(tmp_path)[-4000:]
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert _wait(procs, tmp_path) == [0, 0], _log(tmp_path)[-4000:]
    stopped = _latest(tmp_path)
    assert 2 <= stopped < STEPS and "signal received: saving and stopping" in _log(tmp_path)
    assert not _tagged(tag)
    procs, tag = _start_nodes(data, tmp_path, 2, 1)  # the resubmitted job
    assert _wait(procs, tmp_path) == [0, 0], _log(tmp_path)[-4000:]
    assert abs(losses(tmp_path / "metrics.jsonl")[STEPS] - one_node[STEPS]) <= 1e-6


# --- the sbatch script, with stand-in sbatch / scontrol / srun on PATH ----------------------------------

STAND_INS = {
    "sbatch": 'printf "%s\\0" "$@" >> "$SLURM_RECORD/sbatch"\necho "Submitted batch job 7"\n',
    "scontrol": ('case "$1 $2" in\n'
                 '  "show hostnames") echo node-a; echo node-b ;;\n'
                 f'  "show job") echo "JobId=$3 UserId=me Command={EXAMPLES}/slurm_flm101b.sbatch WorkDir=/x" ;;\n'
                 '  "requeue "*) echo "$2" >> "$SLURM_RECORD/requeue" ;;\n'
                 '  *) exit 1 ;;\n'
                 'esac\n'),
    # One task per node of the allocation (one for --nodes 1), each with its SLURM_NODEID; SIGTERM is
    # passed to every task, as srun does; the exit code is the worst task's.
    "srun": ('n=${SLURM_NNODES:-1}\n'
             'while [[ "$1" == --* ]]; do [[ "$1" == --nodes ]] && n=$2; [[ "$1" != *=* ]] && [[ "$1" != --kill* ]] && shift; shift; done\n'
             'pids=()\n'
             'for ((i = 0; i < n; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & pids+=($!); done\n'
             "trap 'kill -TERM \"${pids[@]}\" 2>/dev/null' TERM\n"
             'rc=0\n'
             'for p in "${pids[@]}"; do while :; do c=0; wait $p || c=$?; kill -0 $p 2>/dev/null || break; done;'
             ' ((c > rc)) && rc=$c; done\n'
             'exit $rc\n'),
}


def _slurm(tmp_path: Path) -> dict:
    bin_dir, record = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    record.mkdir()
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_RECORD": str(record)}


def _job_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in _fake(tmp_path, ["0", "0"]).items() if k not in ("NNODES", "GPUS_PER_NODE", "NODE_RANK")}
    return dict(env, **_slurm(tmp_path), SLURM_JOB_ID="7", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4",
                SLURM_JOB_NODELIST="node-[a-b]", **extra)


@pytest.mark.parametrize("step, nodes", [("stage1", "24"), ("grow1", "1"), ("stage3", "24")])
def test_sbatch_script_submits_itself_from_any_directory_with_its_log_folder(tmp_path, step, nodes):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(ENV, **_slurm(tmp_path), SBATCH_EXTRA="--partition=big")
    proc = subprocess.run(["bash", str(EXAMPLES / "slurm_flm101b.sbatch"), step, "--lr", "1e-4"],
                          capture_output=True, text=True, env=env, cwd=elsewhere, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "logs").is_dir()
    argv = (tmp_path / "slurm" / "sbatch").read_text().split("\0")[:-1]
    assert argv[argv.index("--output") + 1] == f"{elsewhere}/logs/%x-%j.out"
    assert argv[argv.index("--nodes") + 1] == nodes and argv[argv.index("--job-name") + 1] == f"flm101b-{step}"
    assert argv[argv.index("--export") + 1] == f"ALL,FLM_REPO={REPO}" and "--partition=big" in argv
    assert argv[-4:] == [str(EXAMPLES / "slurm_flm101b.sbatch"), step, "--lr", "1e-4"]


def test_sbatch_script_refuses_an_unknown_step(tmp_path):
    proc = subprocess.run(["bash", str(EXAMPLES / "slurm_flm101b.sbatch"), "stage4"], capture_output=True, text=True,
                          env=dict(ENV, **_slurm(tmp_path)), timeout=60)
    assert proc.returncode == 2 and "stage1, grow1, stage2, grow2 or stage3" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_sbatch_job_starts_one_launcher_per_node_from_slurms_variables(tmp_path):
    proc = subprocess.run(["bash", str(EXAMPLES / "slurm_flm101b.sbatch"), "stage3"], capture_output=True, text=True,
                          env=_job_env(tmp_path), cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = _torchrun_calls(tmp_path)
    assert sorted(call[call.index("--node-rank") + 1] for call in calls) == ["0", "1"]
    for call in calls:
        assert call[call.index("--nnodes") + 1] == "2" and call[call.index("--nproc-per-node") + 1] == "4"
        assert call[call.index("--master-addr") + 1] == "node-a"
    assert not (tmp_path / "slurm" / "requeue").exists()  # finished: nothing to requeue


@pytest.mark.parametrize("restarts, requeued", [("0", True), ("20", False)])
def test_time_limit_stops_cleanly_and_requeues_the_job(tmp_path, restarts, requeued):
    """SLURM's USR1 15 minutes before the limit: the step is stopped with SIGTERM, every launcher exits 0
    after its workers' clean stop, and the job requeues itself (unless MAX_REQUEUES are used up)."""
    env = _job_env(tmp_path, SLURM_RESTART_COUNT=restarts)
    (tmp_path / "codes").write_text("term\nterm\n")
    proc = subprocess.Popen(["bash", str(EXAMPLES / "slurm_flm101b.sbatch"), "stage1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 30
    while len(_torchrun_calls(tmp_path)) < 2 or not (tmp_path / "record.ready").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (tmp_path / "record.stops").read_text() == "stopped\nstopped\n"  # both nodes' workers stopped
    assert len(_torchrun_calls(tmp_path)) == 2  # and none restarted
    assert (tmp_path / "slurm" / "requeue").exists() == requeued, err
    if requeued:
        assert (tmp_path / "slurm" / "requeue").read_text() == "7\n"
    else:
        assert "requeues are used up" in err


# --- ready for a GPU host --------------------------------------------------------------------------------

def _extras() -> dict[str, list[str]]:
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    extras = next(kw.value for kw in call.keywords if kw.arg == "extras_require")
    return ast.literal_eval(extras)


def test_gpu_extra_asks_for_transformer_engine_pytorch_and_no_pypi_apex():
    """PyPI's `apex` is an unrelated web toolkit; NVIDIA apex is built from source or comes in NVIDIA's
    containers. Transformer Engine's PyTorch part needs the [pytorch] extra."""
    from packaging.requirements import Requirement

    for name, requirements in _extras().items():
        assert all(Requirement(r).name.lower() != "apex" for r in requirements), (name, requirements)
    gpu = {Requirement(r).name.lower().replace("_", "-"): Requirement(r) for r in _extras()["gpu"]}
    assert "pytorch" in gpu["transformer-engine"].extras


def test_pytest_markers_are_registered_and_make_has_a_fast_tier():
    ini = (REPO / "pytest.ini").read_text()
    assert "\n    slow:" in ini and "\n    gpu:" in ini
    makefile = (REPO / "Makefile").read_text()
    assert 'test-fast: setup\n\t$(BIN)/python -m pytest -q --durations=25 -m "not slow" tests' in makefile


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes on an idle machine; a loaded 2-core one takes several times that
def test_the_whole_recipe_rehearses_through_the_sbatch_script(data, tmp_path):
    """FLM_REHEARSAL=1 and the stand-in SLURM: stage 1 on two "nodes", the width growth, stage 2, the depth
    growth and stage 3, each through examples/slurm_flm101b.sbatch and the real launchers, unchanged."""
    env = dict(ENV, **_slurm(tmp_path), FLM_REHEARSAL="1", PYTHON=sys.executable, SLURM_JOB_ID="7",
               SLURM_NNODES="2", SLURM_GPUS_ON_NODE="1", SLURM_JOB_NODELIST="node-[a-b]", MASTER_ADDR="127.0.0.1",
               DATA_PATH=f"0.535 {data['en']} 0.465 {data['zh']}", TOKENIZER_TYPE="HuggingFaceTokenizer",
               TOKENIZER_MODEL=data["tokenizer"], REHEARSAL_STEPS="4")
    for step in ("stage1", "grow1", "stage2", "grow2", "stage3"):
        proc = subprocess.run(["bash", str(EXAMPLES / "slurm_flm101b.sbatch"), step, "--data-cache-path", data["cache"]]
                              if step.startswith("stage") else ["bash", str(EXAMPLES / "slurm_flm101b.sbatch"), step],
                              capture_output=True, text=True, env=dict(env, MASTER_PORT=str(free_port())),
                              cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, (step, (proc.stdout + proc.stderr)[-4000:])
        if step.startswith("stage"):
            assert "step       4/4" in proc.stdout, proc.stdout[-3000:]
    root = tmp_path / "rehearsal" / "checkpoints"
    for name in ("flm-16b", "flm-51b", "flm-101b"):
        assert (root / name / "latest_checkpointed_iteration.txt").read_text().strip() == "4", name
    assert (root / "flm-51b-grown").is_dir() and (root / "flm-101b-grown").is_dir()
