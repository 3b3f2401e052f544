#!/usr/bin/env bash
# µP hyper-parameter transfer and loss prediction on a CPU (2 cores: 20-40 minutes, depending on load).
#
#   bash examples/mup_predict_cpu.sh [OUT]          (default OUT=runs/mup_cpu; rerun to resume)
#
# 1. grid search of LR x init std x output multiplier at the proxy width 32 -> OUT/search/table.md
# 2. direct LR search at 4x the proxy width (128), to test the transfer -> OUT/direct128/table.md
# 3. width sweep 16, 32, 64, 128 (doubling: an 8x span, as µScaling's 128..1024) with the proxy's
#    hyper-parameters                                            -> OUT/sweep/sweep.json
# 4. fit L(N) = a N^b + c on the 4 widths, predict width 512 (4x the largest) -> OUT/fit/fit.png
# 5. train width 512 for real and compare                      -> OUT/fit/check.json, check.png
# 6. coordinate check (µP vs standard parametrisation)    -> OUT/coord_check/coord_check.png
# Every run is resumable: finished runs are skipped when the script is run again.
set -euo pipefail
source "$(dirname "$0")/_python.sh"  # PY: $PYTHON, else .venv/bin/python, else python3
cd "$REPO"
OUT=${1:-runs/mup_cpu}
JOBS=${JOBS:-2}
DATA=$OUT/data
export PYTHONWARNINGS=ignore
mkdir -p "$DATA"

# Data: the demo corpus (KJV + People's Daily) with a 1,024-token byte-level BPE.
if [ ! -f "$DATA/zh_text_document.idx" ]; then
  "$PY" tools/build_demo_corpus.py --out "$DATA/corpus"
  "$PY" tools/train_tokenizer.py --input "$DATA/corpus/en_train.jsonl" "$DATA/corpus/zh_train.jsonl" \
    --vocab-size 1024 --output "$DATA/bpe1k.json"
  for lang in en zh; do
    "$PY" tools/preprocess_data.py --input "$DATA/corpus/${lang}_train.jsonl" --output-prefix "$DATA/$lang" \
      --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$DATA/bpe1k.json" --append-eod
  done
fi

# Flags shared by every run (passed through to pretrain_flm.py): 2 layers, sequences of 128,
# batch 16, 300 steps (about 0.6M tokens, under one epoch), warm-up 30 then cosine decay,
# validation loss on 8 fixed held-out batches every 100 steps.
COMMON=(--tokenizer-type HuggingFaceTokenizer --tokenizer-model "$DATA/bpe1k.json"
        --data-path 0.5 "$DATA/en_text_document" 0.5 "$DATA/zh_text_document" --split 98,2,0
        --num-layers 2 --seq-length 128 --micro-batch-size 16 --global-batch-size 16 --train-iters 300
        --lr-warmup-iters 30 --eval-interval 100 --eval-iters 8 --log-interval 10 --head-dim 16)
LRS=(1e-3 2e-3 4e-3 8e-3 1.6e-2 3.2e-2 6.4e-2)

"$PY" tools/predict_loss.py search --out "$OUT" --jobs "$JOBS" --proxy-width 32 \
  --lrs "${LRS[@]}" --init-stds 0.02 0.05 --output-mults 1 4 16 "${COMMON[@]}"

read -r STD MULT < <("$PY" -c "import json; b = json.load(open('$OUT/search/best.json')); print(b['init_std'], b['output_mult'])")
"$PY" tools/predict_loss.py search --out "$OUT" --name direct128 --jobs "$JOBS" --proxy-width 128 \
  --mup-base-width 32 --lrs "${LRS[@]}" --init-stds "$STD" --output-mults "$MULT" "${COMMON[@]}"

"$PY" tools/predict_loss.py sweep --out "$OUT" --jobs "$JOBS" --widths 16 32 64 128 \
  --from-search "$OUT/search/best.json" "${COMMON[@]}"
"$PY" tools/predict_loss.py fit --sweep "$OUT/sweep/sweep.json" --target-width 512
"$PY" tools/predict_loss.py check --prediction "$OUT/fit/fit.json"

"$PY" tools/predict_loss.py coord-check --out "$OUT/coord_check"

"$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
proxy, direct = (json.load(open(f"{out}/{name}/best.json")) for name in ("search", "direct128"))
lrs = sorted(proxy["grid"]["lrs"])
steps = abs(lrs.index(proxy["lr"]) - lrs.index(direct["lr"]))
check = json.load(open(f"{out}/fit/check.json"))
print(f"LR transfer: proxy (width 32) best {proxy['lr']:g}, direct search at width 128 best {direct['lr']:g}: "
      f"{steps} grid step(s) apart")
print(f"loss prediction for width 512: predicted {check['predicted']:.4f}, actual {check['actual']:.4f}, "
      f"error {100 * check['relative_error']:+.2f}%")
PY
