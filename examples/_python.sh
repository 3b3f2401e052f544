# Shared by every launcher in examples/: which interpreter runs the project, and torchrun through it.
# Sourced, not run. Sets REPO, PY and TORCHRUN (an array).
#
# PY: $PYTHON if set, else this repository's .venv/bin/python (what `make setup` creates) when it
# exists, else python3. torchrun is "$PY" tools/torchrun.py (torch.distributed.run with a clean stop),
# so a `python` or `torchrun` of another installation on PATH (e.g. a system python without torch)
# is never picked up.
#
# Stopping a run: SIGTERM or Ctrl-C (scancel, a SLURM time limit) makes every worker finish its step
# and save; at 101B that takes minutes. torchrun forwards the signal to its workers, exits 0 when they
# all saved and exited 0 (torch's own torchrun exits 1 here: flm_ext/elastic.py), and SIGKILLs the
# ones still running after TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (torch's default: 30 s). The
# launchers give them 900 s (15 minutes); export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=<seconds> to change
# it. The same grace applies when one worker fails and torchrun stops the others. A save cut short
# leaves the previous checkpoint as the latest.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ -x "$REPO/.venv/bin/python" ]]; then
  PY=$REPO/.venv/bin/python
else
  PY=python3
fi
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "$(basename "$0"): no Python interpreter '$PY': run 'make setup' or set PYTHON" >&2
  exit 2
fi
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-900}
TORCHRUN=("$PY" "$REPO/tools/torchrun.py")
