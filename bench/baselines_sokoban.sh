#!/bin/bash
# Issue 7: base vs GRPO vs Early Experience (iwm, sr) vs LEAFE vs LEAFE-from-GRPO, and Reflexion
# at test time, on the 16 held-out rooms of configs/sokoban_leafe.yaml (n=32, 8 turns), every
# model evaluated with that config's eval and rollout sections. Training budgets: GRPO 12 steps x 4 rooms x 8 episodes
# (<= 3,072 env steps, as LEAFE's 64 rooms x 48 turns); Early Experience 32 rooms x 4 expert
# states x (1 + 2 alternatives). Usage: bash bench/baselines_sokoban.sh OUT_DIR  (hours on 2 cores;
# run it from a frozen checkout; every stage resumes when rerun). Then:
#   python bench/compare_passk.py OUT_DIR/passk.png base=OUT_DIR/leafe/eval-base/metrics.json ...
set -e
out=${1:?usage: bench/baselines_sokoban.sh OUT_DIR}
mkdir -p "$out"
eval_cfg=configs/sokoban_leafe.yaml
step() {  # name, then the leafe command line
  name=$1; shift
  /usr/bin/time -v python -m leafe.cli "$@" output_dir="$out" > "$out/$name.out" 2> "$out/$name.err"
}
step leafe run $eval_cfg name=leafe
step ee-iwm early-experience configs/sokoban_early_experience.yaml name=ee-iwm
step ee-iwm-eval eval $eval_cfg name=ee-iwm-eval policy.model="$out/ee-iwm/model"
step ee-sr early-experience configs/sokoban_early_experience.yaml name=ee-sr early_experience.variant=sr
step ee-sr-eval eval $eval_cfg name=ee-sr-eval policy.model="$out/ee-sr/model"
step grpo grpo configs/sokoban_grpo.yaml name=grpo grpo.steps=12
step grpo-eval eval $eval_cfg name=grpo-eval policy.model="$out/grpo/model"
step leafe-from-grpo run $eval_cfg name=leafe-from-grpo run.init_from="$out/grpo" run.eval_base=false
# Inference-time reflection (Reflexion-style) with the reflector LEAFE explored with: up to 3 attempts per sample
step reflexion eval $eval_cfg name=reflexion eval.method=reflexion eval.budget_episodes=3 explore.reflector=env
