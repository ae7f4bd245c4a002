#!/bin/bash
# Issue 4: the equal-budget exploration comparison on the first 32 train rooms of
# configs/sokoban_leafe.yaml (48 turns per room, same rooms and seed for every method).
# Usage: bash bench/explore_comparison.sh OUT_DIR    (about 12 min per method on an idle 2-core CPU;
# run it from a frozen checkout: `git worktree add --detach /tmp/wt HEAD`, editing the source
# during a run can break it through lazy imports). Each run's numbers: OUT_DIR/<name>/explore_summary.json
set -e
out=${1:?usage: bench/explore_comparison.sh OUT_DIR}
mkdir -p "$out"
run() {
  name=$1; shift
  /usr/bin/time -v python -m leafe.cli explore configs/sokoban_leafe.yaml output_dir="$out" name="$name" \
    explore.num_tasks=32 explore.max_tasks_in_flight=32 "$@" > "$out/$name.out" 2> "$out/$name.err"
}
run independent explore.method=independent
run leafe-env explore.method=leafe explore.reflector=env
run refinement-env explore.method=refinement explore.reflector=env
run leafe-env-feedback explore.method=leafe explore.reflector=env explore.trigger=feedback
run leafe-self explore.method=leafe explore.reflector=self
run refinement-self explore.method=refinement explore.reflector=self
