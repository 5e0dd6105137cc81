#!/usr/bin/env bash
# The `demo` profile end to end on one GPU, offline, as a new user runs it, with a 1 s GPU memory
# trace; the run's metrics, figures, report, PPO log and pipeline timings are packed into one archive.
#   RESULTS=/tmp/demo/results [ROOT=/tmp/demo/root] [RUN=demo] [ARGS="-p teacher=worked:1"] bash bench/demo_gpu.sh
set -u
ROOT=${ROOT:-/tmp/demo/root}
RESULTS=${RESULTS:-/tmp/demo/results}
RUN=${RUN:-demo}
ARGS=${ARGS:-}
mkdir -p "$RESULTS" "$ROOT"
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 1000 > "$RESULTS/gpu_mem_$RUN.csv" &
SMI=$!
start=$(date +%s)
python3 -m looper_utils.pipeline --profile demo --run-id "$RUN" --root "$ROOT" $ARGS 2>&1 \
  | grep -v "Kernel is running\|without encryption" | tee "$RESULTS/pipeline_$RUN.log"
echo "wall_seconds=$(( $(date +%s) - start ))" | tee -a "$RESULTS/pipeline_$RUN.log"
kill $SMI
D="$ROOT/runs/$RUN"
cp "$ROOT/checkpoints/ppo/ppo_log.jsonl" "$D/" 2>/dev/null
tar czf "$RESULTS/$RUN.tgz" -C "$D" metrics figures configs pipeline.json report.md ppo_log.jsonl 2>/dev/null
ls -la "$RESULTS"
