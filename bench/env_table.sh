#!/bin/bash
# Issue 6: base default-model Pass@k (k up to 32) on every embedded environment, one
# `leafe eval` per environment: 10 test tasks x 32 samples, each environment's quickstart config
# otherwise unchanged. Then `python bench/env_table.py OUT_DIR` prints the table for BENCHMARKS.
# Usage: bash bench/env_table.sh OUT_DIR [ENV ...]   (default: shop household coding sokoban sciworld)
# Run it from a frozen checkout (`git worktree add --detach /tmp/wt HEAD`); each eval resumes if rerun.
set -e
out=${1:?usage: bench/env_table.sh OUT_DIR [ENV ...]}
shift
envs=${*:-shop household coding sokoban sciworld}
mkdir -p "$out"
for env in $envs; do
  config=configs/${env}_quickstart.yaml
  /usr/bin/time -v python -m leafe.cli eval "$config" output_dir="$out" name="$env" \
    eval.num_tasks=10 eval.samples_per_task=32 'eval.ks=[1,2,4,8,16,32]' > "$out/$env.out" 2> "$out/$env.err"
done
