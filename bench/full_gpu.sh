#!/usr/bin/env bash
# The `full` profile end to end on one GPU with no hub access: local random-init weights with the
# 8B Llama shape and the tokenizer the project builds, GSM8K-format JSONL, small budgets.
# Writes the run, a GPU memory trace (1 s) and the log under $RESULTS.
#   QUANT=bf16|4bit RESULTS=/tmp/full/results [STAGES=01,02,05] [SETS="sft.max_steps=10 ..."] bash bench/full_gpu.sh
set -u
WORK=${WORK:-/tmp/full}
RESULTS=${RESULTS:-$WORK/results}
QUANT=${QUANT:-bf16}
STAGES=${STAGES:-}
SETS=${SETS:-}
mkdir -p "$RESULTS"
python3 bench/make_local_full.py --out "$WORK" --quantization "$QUANT" $(for s in $SETS; do echo --set "$s"; done) | tee "$RESULTS/make_local.json"
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 1000 > "$RESULTS/gpu_mem.csv" &
SMI=$!
python3 -m looper_utils.pipeline --profile "$WORK/full_local_$QUANT.json" --run-id "full-$QUANT" \
  --root "$WORK/root" ${STAGES:+--stages $STAGES} 2>&1 | grep -v "Kernel is running" | tee "$RESULTS/pipeline.log"
kill $SMI
RUN="$WORK/root/runs/full-$QUANT"
cp -r "$RUN/metrics" "$RUN/pipeline.json" "$RESULTS/" 2>/dev/null
find "$WORK/root" -name ppo_log.jsonl -exec cp {} "$RESULTS/" \;
