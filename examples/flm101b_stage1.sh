#!/usr/bin/env bash
# FLM-101B stage 1: FLM-16B (40 x 5632, 44 heads) from scratch on 245.37B tokens.
# 24 nodes x 8 A800: TP 2, PP 1, DP 96; global batch 2304 x 2048 tokens; LR 4e-4, warm-up 4.608M samples.
#   NNODES=24 NODE_RANK=<0..23> MASTER_ADDR=<node 0> DATA_PATH="0.535 en 0.465 zh" CKPT=/ckpt/flm16b \
#     bash examples/flm101b_stage1.sh [extra pretrain_flm.py flags]
#   NNODES=24 GPUS_PER_NODE=8 bash examples/flm101b_stage1.sh --dry-run
#   FLM_REHEARSAL=1 bash examples/flm101b_stage1.sh      # the same script on CPU at a tiny shape
# A dead worker or node restarts the job from the newest checkpoint, up to MAX_RESTARTS (3) times;
# see examples/_launch.sh and docs/operations.md.
CKPT_ROOT=checkpoints
[[ "${FLM_REHEARSAL:-0}" == 1 ]] && CKPT_ROOT=rehearsal/checkpoints  # a rehearsal keeps out of the way
CKPT=${CKPT:-$CKPT_ROOT/flm-16b}
# tools/plan_schedule.py: the save interval that minimises the expected loss to failures (Young), at
# 6,335 h MTBF per node (Llama 3's rate), 24 nodes, 10 GB/s checkpoint I/O (tests check it against the planner).
SAVE_INTERVAL=${SAVE_INTERVAL:-426}
STAGE_ARGS=(
  --model-preset flm-16b
  --tensor-model-parallel-size 2 --pipeline-model-parallel-size 1
  --micro-batch-size 1 --global-batch-size 2304
  --train-samples 119809570          # 245.37B tokens / 2048
  --lr 4e-4 --lr-warmup-samples 4608000
)
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
