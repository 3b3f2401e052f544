#!/usr/bin/env bash
# FLM-101B growth 2 (depth): FLM-51B (40 x 10240, 80 heads) -> FLM-101B (80 x 10240): the 40 new
# layers copy the old ones (stacking) and are gated to the identity until the ramp opens them.
# Reads the last stage-2 checkpoint (any TP/PP) and writes the grown one that
# examples/flm101b_stage3.sh starts from (its GROWN). Streams tensor by tensor (one layer of one
# tensor at a time, at most 1.6 GiB in fp32), on one CPU node.
#   OLD=checkpoints/flm-51b NEW=checkpoints/flm-101b-grown bash examples/grow_51b_to_101b.sh
# Extra flags are passed on (e.g. --depth-placement interleave, --growth-ramp-steps 2000).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"  # REPO and PY: $PYTHON, else .venv/bin/python, else python3
CKPT_ROOT=checkpoints
[[ "${FLM_REHEARSAL:-0}" == 1 ]] && CKPT_ROOT=rehearsal/checkpoints
OLD=${OLD:-$CKPT_ROOT/flm-51b}
NEW=${NEW:-$CKPT_ROOT/flm-101b-grown}
REHEARSAL_ARGS=()  # FLM_REHEARSAL=1: the tiny presets' growth (examples/_rehearsal.sh)
[[ "${FLM_REHEARSAL:-0}" == 1 ]] && REHEARSAL_ARGS=(--num-layers 8 --growth-ramp-steps 4)
exec "$PY" "$REPO/tools/grow_checkpoint.py" --load "$OLD" --save "$NEW" \
  --num-layers 80 --depth-init stack \
  --growth-ramp-steps "${RAMP_STEPS:-1000}" "${REHEARSAL_ARGS[@]}" "$@"
