#!/usr/bin/env bash
# One PPO iteration on the 8B Llama shape per variant, from the same SFT adapter: a `full` project of
# local random-init bf16 weights (bench/make_local_full.py), 01 and a one-step 02, then
# bench/demo_overhead.py's PPO part (each variant in its own process; per-phase seconds, peak memory).
# The batch is the full profile's: 64 prompts x 4 samples x up to 256 new tokens, minibatch 8, gae.
#   RESULTS=/tmp/p8 [OLD=.old] [ITERATIONS=1] [VARIANTS="new:;shared:critic=shared"] [SETUP=1] [PROFILE=4] bash bench/ppo_8b.sh
# PROFILE=N: the update's parts timed and its first N policy steps under torch.profiler (demo_overhead.py).
# SETUP=0 reuses the project an earlier call left in $WORK (e.g. to time more variants).
set -u
RESULTS=${RESULTS:-/tmp/ppo8b}
OLD=${OLD:-}
ITERATIONS=${ITERATIONS:-1}
VARIANTS=${VARIANTS:-"new:;shared:critic=shared;shared-nockpt:critic=shared,gradient_checkpointing=False"}
SETUP=${SETUP:-1}
NAME=${NAME:-ppo_8b}
PROFILE=${PROFILE:-}
export WORK=/tmp/full QUANT=bf16 STAGES=01,02
export SETS="sft.max_steps=1 sft.n_dev_eval=8 ppo.prompts_per_iter=64 ppo.k=4 ppo.max_new_tokens=256 ppo.minibatch_size=8"
mkdir -p "$RESULTS"
if [ "$SETUP" = 1 ]; then
  RESULTS="$RESULTS/setup" bash bench/full_gpu.sh > /dev/null 2>&1 || { echo "setup failed"; tail -30 "$RESULTS/setup/pipeline.log"; exit 1; }
fi
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 1000 > "$RESULTS/gpu_mem_$NAME.csv" &
SMI=$!
PYTHONUNBUFFERED=1 python3 bench/demo_overhead.py --root "$WORK/root" --profile "$WORK/full_local_$QUANT.json" \
  --run-id "full-$QUANT" --what ppo --iterations "$ITERATIONS" --ppo-variants "$VARIANTS" ${OLD:+--old-code "$OLD"} \
  ${PROFILE:+--profile-ppo --profile-steps "$PROFILE"} \
  --out "$RESULTS/$NAME.json"
kill $SMI
