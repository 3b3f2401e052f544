#!/usr/bin/env bash
# FLM-101B stage 3: FLM-101B (80 x 10240, 80 heads), grown in depth from stage 2, on 26.54B tokens.
# 24 nodes x 8 A800: TP 4, PP 4, DP 12; global batch 2160; LR 2e-4, warm-up 230.4k samples.
# First grow: bash examples/grow_51b_to_101b.sh (writes GROWN=checkpoints/flm-101b-grown).
#   NNODES=24 NODE_RANK=.. MASTER_ADDR=.. DATA_PATH=".." bash examples/flm101b_stage3.sh
#   NNODES=24 GPUS_PER_NODE=8 bash examples/flm101b_stage3.sh --dry-run
CKPT_ROOT=checkpoints
[[ "${FLM_REHEARSAL:-0}" == 1 ]] && CKPT_ROOT=rehearsal/checkpoints  # a rehearsal keeps out of the way
CKPT=${CKPT:-$CKPT_ROOT/flm-101b}
# tools/plan_schedule.py: the save interval that minimises the expected loss to failures (Young), at
# 6,335 h MTBF per node (Llama 3's rate), 24 nodes, 10 GB/s checkpoint I/O (tests check it against the planner).
SAVE_INTERVAL=${SAVE_INTERVAL:-187}
GROWN=${GROWN:-$CKPT_ROOT/flm-101b-grown}
STAGE_ARGS=(
  --model-preset flm-101b
  --tensor-model-parallel-size 4 --pipeline-model-parallel-size 4
  --micro-batch-size 1 --global-batch-size 2160
  --train-samples 12958984           # 26.54B tokens / 2048
  --lr 2e-4 --lr-warmup-samples 230400
)
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
