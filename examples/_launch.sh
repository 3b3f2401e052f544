# Shared by the flm101b_stage*.sh scripts: torchrun from the usual multi-node variables, restarted
# from the newest complete checkpoint when a worker or node dies. Sourced, not run. The caller sets
# STAGE_ARGS (an array), CKPT (this stage's checkpoints), SAVE_INTERVAL (its default, from
# tools/plan_schedule.py --failures) and, for grown stages, GROWN (the grown checkpoint to start from).
# "$@" goes to pretrain_flm.py, except torchrun's own flags (--max-restarts, --rdzv-*, --log-dir, ...:
# they go to torchrun) and --no-FLAG, which removes a boolean FLAG the launcher sets (--no-bf16,
# --no-sequence-parallel). The interpreter ($PYTHON, else .venv/bin/python, else python3) and the
# SIGTERM grace (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, default 900 s) are set in _python.sh.
# Environment: NNODES NODE_RANK GPUS_PER_NODE MASTER_ADDR MASTER_PORT CKPT DATA_PATH TOKENIZER_TYPE
# TOKENIZER_MODEL TEACHER_DATA_PATH SAVE_INTERVAL MAX_RESTARTS (default 3), FLM_REHEARSAL=1 (the same
# script at a tiny shape on CPU, examples/_rehearsal.sh). Details: docs/operations.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
_me=$(basename "$0")
NNODES=${NNODES:-${SLURM_NNODES:-1}}
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:-0}}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-6000}
MAX_RESTARTS=${MAX_RESTARTS:-3}
if [[ "${FLM_REHEARSAL:-0}" == 1 ]]; then
  GPUS_PER_NODE=${GPUS_PER_NODE:-1}
else
  GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
fi
for _var in NNODES NODE_RANK GPUS_PER_NODE MASTER_PORT MAX_RESTARTS SAVE_INTERVAL; do
  if [[ ! "${!_var}" =~ ^[0-9]+$ ]]; then
    echo "$_me: $_var='${!_var}' must be a whole number >= 0" >&2
    exit 2
  fi
done
if [[ "${FLM_REHEARSAL:-0}" != 0 && "${FLM_REHEARSAL:-0}" != 1 ]]; then
  echo "$_me: FLM_REHEARSAL='$FLM_REHEARSAL' must be 0 or 1" >&2
  exit 2
fi
WORLD_SIZE=$((NNODES * GPUS_PER_NODE))
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # overlap TP comms with compute

# torchrun's flags that take a value (both spellings), and its switches; the rest is pretrain_flm.py's.
_TORCHRUN_VALUE_FLAGS=" max-restarts monitor-interval rdzv-backend rdzv-endpoint rdzv-id rdzv-conf log-dir
  redirects tee local-ranks-filter start-method role local-addr logs-specs shutdown-timeout
  signals-to-handle numa-binding event-log-handler "
TORCHRUN_ARGS=()
USER_ARGS=()
REMOVE=()
_args=("$@")
for ((_i = 0; _i < ${#_args[@]}; _i++)); do
  _a=${_args[_i]}
  _name=${_a%%=*}
  _name=${_name#--}
  _name=${_name//_/-}
  if [[ "$_a" == --* && "$_TORCHRUN_VALUE_FLAGS" == *" $_name "* ]]; then
    TORCHRUN_ARGS+=("$_a")
    if [[ "$_a" != *=* ]]; then
      if ((_i + 1 >= ${#_args[@]})); then
        echo "$_me: torchrun flag $_a needs a value" >&2
        exit 2
      fi
      _i=$((_i + 1))
      TORCHRUN_ARGS+=("${_args[_i]}")
    fi
  elif [[ "$_a" == --no-* && " ${STAGE_ARGS[*]} --bf16 --sequence-parallel --use-distributed-optimizer " == *" --${_a#--no-} "* ]]; then
    REMOVE+=("--${_a#--no-}")  # a switch the launcher sets: --no-bf16 drops --bf16
  else
    USER_ARGS+=("$_a")
  fi
done

DRY_RUN=0
[[ " ${USER_ARGS[*]} " == *" --dry-run "* ]] && DRY_RUN=1
REHEARSAL_ARGS=()
if [[ "${FLM_REHEARSAL:-0}" == 1 ]]; then
  source "$(dirname "${BASH_SOURCE[0]}")/_rehearsal.sh"  # sets REHEARSAL_ARGS, REMOVE, DATA_PATH, TOKENIZER_*
fi

DATA_ARGS=()
if [[ -n "${DATA_PATH:-}" ]]; then
  # e.g. DATA_PATH="0.535 /data/en_text_document 0.465 /data/zh_text_document"
  read -r -a _data <<<"$DATA_PATH"
  DATA_ARGS+=(--data-path "${_data[@]}")
fi
[[ -n "${TEACHER_DATA_PATH:-}" ]] && DATA_ARGS+=(--teacher-data-path "$TEACHER_DATA_PATH" --teacher-fraction "${TEACHER_FRACTION:-0.1}")
TOKENIZER_ARGS=(--tokenizer-type "${TOKENIZER_TYPE:-CL100kTokenizer}")
[[ -n "${TOKENIZER_MODEL:-}" ]] && TOKENIZER_ARGS+=(--tokenizer-model "$TOKENIZER_MODEL")

COMMON_ARGS=(
  --seq-length 2048 --bf16
  --sequence-parallel --use-distributed-optimizer
  --adam-beta1 0.9 --adam-beta2 0.95 --weight-decay 0.1 --clip-grad 1.0
  --lr-decay-style cosine --min-lr 6e-6
  --split 969,30,1
  --log-interval 1 --eval-interval 1000 --eval-iters 10 --save-interval "$SAVE_INTERVAL"
)

# The arguments of one attempt. Each attempt resumes this stage when it has checkpoints; a grown
# stage otherwise starts from the grown weights.
build_args() {
  local ckpt_args=(--save "$CKPT" --tensorboard-dir "$CKPT/tensorboard") all a r keep
  if [[ -n "${GROWN:-}" && ! -f "$CKPT/latest_checkpointed_iteration.txt" ]]; then
    ckpt_args+=(--load "$GROWN" --start-new-stage)
  else
    ckpt_args+=(--load "$CKPT")
  fi
  all=("${STAGE_ARGS[@]}" "${COMMON_ARGS[@]}" "${ckpt_args[@]}" "${DATA_ARGS[@]}" "${TOKENIZER_ARGS[@]}"
       "${REHEARSAL_ARGS[@]}" "${USER_ARGS[@]}")
  ARGS=()
  for a in "${all[@]}"; do
    keep=1
    for r in "${REMOVE[@]}"; do [[ "$a" == "$r" ]] && keep=0; done
    ((keep)) && ARGS+=("$a")
  done
  return 0
}
build_args

if ((DRY_RUN)); then
  # Check the configuration for this world size: no GPU, no data, no torchrun needed.
  exec "$PY" "$REPO/pretrain_flm.py" "${ARGS[@]}" --world-size "$WORLD_SIZE"
fi
# Check every flag for this world size in one process first: a bad one is one line and exit 2 here,
# not an error in each of the workers (about as long as the trainer's own start-up).
"$PY" "$REPO/pretrain_flm.py" "${ARGS[@]}" --world-size "$WORLD_SIZE" --check-config || exit $?

# Recovery without a person: torchrun exits non-zero when a worker dies (it stops the others on this
# node; the other nodes' workers fail on their next collective). Each node's launcher then starts a
# fresh torchrun, on MASTER_PORT + attempt so that no node meets the previous attempt's rendezvous,
# which resumes from the newest complete checkpoint, up to MAX_RESTARTS times. A stop asked for with
# SIGTERM / SIGINT (scancel, a SLURM time limit) is passed on, never restarted; after a clean save
# torchrun (tools/torchrun.py) exits 0, and so does this script. Processes an attempt leaves behind
# (e.g. a checkpoint writer of a killed worker) are found by the FLM_LAUNCH_ID in their environment
# and killed before the next attempt.
_attempt=0
_stopping=0
_child=0
_on_stop() {
  _stopping=1
  if ((_child > 0)); then kill -s "$1" "$_child" 2>/dev/null || true; fi
}
trap '_on_stop TERM' TERM
trap '_on_stop INT' INT
_reap() {  # kill what is left of the attempt with launch id $1 on this node
  local file pid left=0
  for file in $(grep -lzxF "FLM_LAUNCH_ID=$1" /proc/[0-9]*/environ 2>/dev/null); do
    pid=${file#/proc/}
    pid=${pid%/environ}
    kill -9 "$pid" 2>/dev/null && left=$((left + 1))
  done
  ((left == 0)) || echo "$_me: killed $left process(es) left over by the previous attempt" >&2
  return 0
}
while :; do
  _id="$$-$_attempt-$RANDOM"
  FLM_LAUNCH_ID=$_id "${TORCHRUN[@]}" --nnodes "$NNODES" --nproc-per-node "$GPUS_PER_NODE" \
    --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" --master-port "$((MASTER_PORT + _attempt))" \
    "${TORCHRUN_ARGS[@]}" "$REPO/pretrain_flm.py" "${ARGS[@]}" &
  _child=$!
  while :; do
    _rc=0
    wait "$_child" || _rc=$?
    kill -0 "$_child" 2>/dev/null || break  # else a trapped signal interrupted the wait
  done
  _child=0
  _reap "$_id"
  if ((_rc == 0)); then
    exit 0
  elif ((_stopping)); then
    echo "$_me: stopped by a signal; torchrun exited $_rc" >&2
    exit "$_rc"
  elif ((_attempt >= MAX_RESTARTS)); then
    echo "$_me: torchrun exited $_rc after $_attempt restart(s) (MAX_RESTARTS=$MAX_RESTARTS): giving up" >&2
    exit "$_rc"
  fi
  _attempt=$((_attempt + 1))
  echo "$_me: torchrun exited $_rc: restart $_attempt of $MAX_RESTARTS, resuming from the newest complete" \
       "checkpoint in $CKPT" >&2
  sleep "${RESTART_DELAY:-3}"
  build_args
done
