# FLM_REHEARSAL=1: the stage launchers (and the sbatch script, which runs them) unchanged, on CPU at a
# tiny shape, so the exact scripts of a 192-GPU run are smoke-tested before a cluster is booked.
# Sourced by _launch.sh (and, for the shape only, by the grow scripts). What changes:
# - --bf16, --fp16 and --sequence-parallel are dropped (they need GPUs / TP > 1);
# - the stage's preset becomes its tiny mirror (flm-16b -> tiny-stage1, flm-51b -> tiny-stage2,
#   flm-101b -> tiny-stage3: the same growth path at CPU scale), TP 1 x PP 1 (REHEARSAL_TP / _PP),
#   sequence 64, micro-batch 1, global batch REHEARSAL_GLOBAL_BATCH (8), REHEARSAL_STEPS (8) steps,
#   a save every REHEARSAL_SAVE_INTERVAL (2) steps, an evaluation every 4;
# - without DATA_PATH, a small bilingual set (demo corpus, 1,024-token BPE) is built once in
#   REHEARSAL_DATA (default rehearsal/data), under a lock so that several "nodes" can share it.
# Everything else is the real path: CKPT (default rehearsal/checkpoints/...), NNODES, NODE_RANK,
# GPUS_PER_NODE (default 1 here), MASTER_ADDR, MASTER_PORT, MAX_RESTARTS, resume, restarts, torchrun.
# Flags given to the script still win (e.g. --tensor-model-parallel-size 2 with GPUS_PER_NODE=2).
REMOVE+=(--bf16 --fp16 --sequence-parallel)
REHEARSAL_PRESET=tiny-stage1
case " ${STAGE_ARGS[*]} " in
  *" flm-51b "*) REHEARSAL_PRESET=tiny-stage2 ;;
  *" flm-101b "*) REHEARSAL_PRESET=tiny-stage3 ;;
esac
_rgbs=${REHEARSAL_GLOBAL_BATCH:-8}
REHEARSAL_ARGS=(
  --model-preset "$REHEARSAL_PRESET"
  --tensor-model-parallel-size "${REHEARSAL_TP:-1}" --pipeline-model-parallel-size "${REHEARSAL_PP:-1}"
  --seq-length 64 --micro-batch-size 1 --global-batch-size "$_rgbs"
  --train-samples "$((${REHEARSAL_STEPS:-8} * _rgbs))" --lr 3e-3 --min-lr 3e-4 --lr-warmup-samples "$((2 * _rgbs))"
  --split 90,10,0 --eval-interval 4 --eval-iters 1 --save-interval "${REHEARSAL_SAVE_INTERVAL:-2}"
)

if [[ -z "${DATA_PATH:-}" && "${DRY_RUN:-0}" == 0 ]]; then
  _rdata=$(mkdir -p "${REHEARSAL_DATA:-rehearsal/data}" && cd "${REHEARSAL_DATA:-rehearsal/data}" && pwd)
  (
    flock 9
    if [[ ! -f "$_rdata/done" ]]; then
      echo "$_me: rehearsal: building a small bilingual data set in $_rdata (once)" >&2
      "$PY" "$REPO/tools/build_demo_corpus.py" --out "$_rdata/corpus" >/dev/null
      head -n 200 "$_rdata/corpus/en_train.jsonl" >"$_rdata/en.jsonl"
      head -n 400 "$_rdata/corpus/zh_train.jsonl" >"$_rdata/zh.jsonl"
      "$PY" "$REPO/tools/train_tokenizer.py" --input "$_rdata/en.jsonl" "$_rdata/zh.jsonl" --vocab-size 1024 \
        --output "$_rdata/bpe1k.json" >/dev/null
      for _lang in en zh; do
        "$PY" "$REPO/tools/preprocess_data.py" --input "$_rdata/$_lang.jsonl" --output-prefix "$_rdata/$_lang" \
          --tokenizer-type HuggingFaceTokenizer --tokenizer-model "$_rdata/bpe1k.json" --append-eod >/dev/null
      done
      touch "$_rdata/done"
    fi
  ) 9>"$_rdata.lock"
  DATA_PATH="0.535 $_rdata/en_text_document 0.465 $_rdata/zh_text_document"
  TOKENIZER_TYPE=HuggingFaceTokenizer
  TOKENIZER_MODEL=$_rdata/bpe1k.json
fi
