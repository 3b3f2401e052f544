#!/usr/bin/env bash
# FLM-101B stage 2: FLM-51B (40 x 10240, 80 heads), grown in width from stage 1, on 39.64B tokens.
# 24 nodes x 8 A800: TP 4, PP 2, DP 24; global batch 2304; LR 3.4e-4, warm-up 230.4k samples.
# First grow: bash examples/grow_16b_to_51b.sh (writes GROWN=checkpoints/flm-51b-grown).
#   NNODES=24 NODE_RANK=.. MASTER_ADDR=.. DATA_PATH=".." bash examples/flm101b_stage2.sh
#   NNODES=24 GPUS_PER_NODE=8 bash examples/flm101b_stage2.sh --dry-run
CKPT_ROOT=checkpoints
[[ "${FLM_REHEARSAL:-0}" == 1 ]] && CKPT_ROOT=rehearsal/checkpoints  # a rehearsal keeps out of the way
CKPT=${CKPT:-$CKPT_ROOT/flm-51b}
# tools/plan_schedule.py: the save interval that minimises the expected loss to failures (Young), at
# 6,335 h MTBF per node (Llama 3's rate), 24 nodes, 10 GB/s checkpoint I/O (tests check it against the planner).
SAVE_INTERVAL=${SAVE_INTERVAL:-239}
GROWN=${GROWN:-$CKPT_ROOT/flm-51b-grown}
STAGE_ARGS=(
  --model-preset flm-51b
  --tensor-model-parallel-size 4 --pipeline-model-parallel-size 2
  --micro-batch-size 1 --global-batch-size 2304
  --train-samples 19355469           # 39.64B tokens / 2048
  --lr 3.4e-4 --lr-warmup-samples 230400
)
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
