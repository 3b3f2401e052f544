#!/usr/bin/env bash
# FLM-101B stage 1: FLM-16B (40 x 5632, 44 heads) from scratch on 245.37B tokens.
# 24 nodes x 8 A800: TP 2, PP 1, DP 96; global batch 2304 x 2048 tokens; LR 4e-4, warm-up 4.608M samples.
#   NNODES=24 NODE_RANK=<0..23> MASTER_ADDR=<node 0> DATA_PATH="0.535 en 0.465 zh" CKPT=/ckpt/flm16b \
#     bash examples/flm101b_stage1.sh [extra pretrain_flm.py flags]
#   NNODES=24 GPUS_PER_NODE=8 bash examples/flm101b_stage1.sh --dry-run
CKPT=${CKPT:-checkpoints/flm-16b}
STAGE_ARGS=(
  --model-preset flm-16b
  --tensor-model-parallel-size 2 --pipeline-model-parallel-size 1
  --micro-batch-size 1 --global-batch-size 2304
  --train-samples 119809570          # 245.37B tokens / 2048
  --lr 4e-4 --lr-warmup-samples 4608000
)
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
