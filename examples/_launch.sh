# Shared by the flm101b_stage*.sh scripts: torchrun from the usual multi-node variables.
# Sourced, not run. The caller sets STAGE_ARGS (an array), CKPT (this stage's checkpoints) and, for
# grown stages, GROWN (the grown checkpoint to start from); "$@" is passed through to pretrain_flm.py.
# The interpreter ($PYTHON, else .venv/bin/python, else python3) and the SIGTERM grace given to the
# workers to save (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, default 900 s) are set in _python.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-6000}
WORLD_SIZE=$((NNODES * GPUS_PER_NODE))
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}  # overlap TP comms with compute

DATA_ARGS=()
if [[ -n "${DATA_PATH:-}" ]]; then
  # e.g. DATA_PATH="0.535 /data/en_text_document 0.465 /data/zh_text_document"
  read -r -a _data <<<"$DATA_PATH"
  DATA_ARGS+=(--data-path "${_data[@]}")
fi
[[ -n "${TEACHER_DATA_PATH:-}" ]] && DATA_ARGS+=(--teacher-data-path "$TEACHER_DATA_PATH" --teacher-fraction "${TEACHER_FRACTION:-0.1}")
TOKENIZER_ARGS=(--tokenizer-type CL100kTokenizer)
[[ -n "${TOKENIZER_MODEL:-}" ]] && TOKENIZER_ARGS+=(--tokenizer-model "$TOKENIZER_MODEL")

# Resume this stage when it has checkpoints; a grown stage otherwise starts from the grown weights.
CKPT_ARGS=(--save "$CKPT" --tensorboard-dir "$CKPT/tensorboard")
if [[ -n "${GROWN:-}" && ! -f "$CKPT/latest_checkpointed_iteration.txt" ]]; then
  CKPT_ARGS+=(--load "$GROWN" --start-new-stage)
else
  CKPT_ARGS+=(--load "$CKPT")
fi

COMMON_ARGS=(
  --seq-length 2048 --bf16
  --sequence-parallel --use-distributed-optimizer
  --adam-beta1 0.9 --adam-beta2 0.95 --weight-decay 0.1 --clip-grad 1.0
  --lr-decay-style cosine --min-lr 6e-6
  --split 969,30,1
  --log-interval 1 --eval-interval 1000 --eval-iters 10 --save-interval 500
)

ARGS=("${STAGE_ARGS[@]}" "${COMMON_ARGS[@]}" "${CKPT_ARGS[@]}" "${DATA_ARGS[@]}" "${TOKENIZER_ARGS[@]}" "$@")
if [[ " $* " == *" --dry-run "* ]]; then
  # Check the configuration for this world size: no GPU, no data, no torchrun needed.
  exec "$PY" "$REPO/pretrain_flm.py" "${ARGS[@]}" --world-size "$WORLD_SIZE"
fi
# Check every flag for this world size in one process first: a bad one is one line and exit 2 here,
# not an error in each of the workers (about as long as the trainer's own start-up).
"$PY" "$REPO/pretrain_flm.py" "${ARGS[@]}" --world-size "$WORLD_SIZE" --check-config || exit $?
if [[ "$("${TORCHRUN[@]}" --help 2>/dev/null)" != *--shutdown-timeout* ]]; then
  echo "$(basename "$0"): warning: this torchrun has no --shutdown-timeout: it kills the workers 30 s after" \
       "a SIGTERM, which can cut a save short (the previous checkpoint stays the latest)" >&2
fi
exec "${TORCHRUN[@]}" --nnodes "$NNODES" --nproc-per-node "$GPUS_PER_NODE" --node-rank "$NODE_RANK" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" "$REPO/pretrain_flm.py" "${ARGS[@]}"
