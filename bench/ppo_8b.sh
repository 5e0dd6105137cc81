#!/usr/bin/env bash
# One PPO iteration on the 8B Llama shape, this code against an earlier copy, from the same SFT adapter:
# a `full` project of local random-init bf16 weights (bench/make_local_full.py), 01 and a one-step 02,
# then bench/demo_overhead.py's PPO part (each variant in its own process; per-phase seconds, peak memory).
# The batch is the full profile's: 64 prompts x 4 samples x up to 256 new tokens, minibatch 8.
#   RESULTS=/tmp/p8 [OLD=.old] [ITERATIONS=2] bash bench/ppo_8b.sh
set -u
RESULTS=${RESULTS:-/tmp/ppo8b}
OLD=${OLD:-}
ITERATIONS=${ITERATIONS:-2}
export WORK=/tmp/full QUANT=bf16 STAGES=01,02
export SETS="sft.max_steps=1 ppo.prompts_per_iter=64 ppo.k=4 ppo.max_new_tokens=256 ppo.minibatch_size=8"
RESULTS="$RESULTS/setup" bash bench/full_gpu.sh > /dev/null 2>&1 || { echo "setup failed"; tail -30 "$RESULTS/setup/pipeline.log"; exit 1; }
PYTHONUNBUFFERED=1 python3 bench/demo_overhead.py --root "$WORK/root" --profile "$WORK/full_local_$QUANT.json" \
  --run-id "full-$QUANT" --what ppo --iterations "$ITERATIONS" ${OLD:+--old-code "$OLD"} --out "$RESULTS/ppo_8b.json"
