#!/usr/bin/env bash
# FLM-101B growth 1 (width): FLM-16B (40 x 5632, 44 heads, FFN 22528) -> FLM-51B (40 x 10240,
# 80 heads, FFN 40960), head size 128 kept. Reads the last stage-1 checkpoint (any TP/PP) and writes
# the grown one that examples/flm101b_stage2.sh starts from (its GROWN), with the MSG masks' ramp.
# Streams tensor by tensor: runs on one CPU node with memory for a few of the largest tensors
# (the embedding, 100352 x 10240 fp32 = 3.9 GiB, plus the output bucket), not for the model.
#   OLD=checkpoints/flm-16b NEW=checkpoints/flm-51b-grown bash examples/grow_16b_to_51b.sh
# Extra flags are passed on (e.g. --growth-ramp-steps 2000, --seed 1); --verify needs memory for
# both models in fp32 (about 0.8 TB here), so it is for smaller models and tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"  # REPO and PY: $PYTHON, else .venv/bin/python, else python3
CKPT_ROOT=checkpoints
[[ "${FLM_REHEARSAL:-0}" == 1 ]] && CKPT_ROOT=rehearsal/checkpoints
OLD=${OLD:-$CKPT_ROOT/flm-16b}
NEW=${NEW:-$CKPT_ROOT/flm-51b-grown}
REHEARSAL_ARGS=()  # FLM_REHEARSAL=1: the tiny presets' growth (examples/_rehearsal.sh)
[[ "${FLM_REHEARSAL:-0}" == 1 ]] && REHEARSAL_ARGS=(--hidden-size 128 --num-attention-heads 8 --ffn-hidden-size 512 --growth-ramp-steps 4)
exec "$PY" "$REPO/tools/grow_checkpoint.py" --load "$OLD" --save "$NEW" \
  --hidden-size 10240 --num-attention-heads 80 --ffn-hidden-size 40960 \
  --growth-ramp-steps "${RAMP_STEPS:-1000}" "${REHEARSAL_ARGS[@]}" "$@"
