#!/bin/bash
# Issue 7: base vs GRPO vs Early Experience (iwm, sr) vs LEAFE vs LEAFE-from-GRPO, and Reflexion
# at test time, on the held-out tasks of configs/<ENV>_leafe.yaml, every model evaluated with that
# config's eval and rollout sections (same tasks, seeds and per-episode budget).
#   ENV=sokoban: 16 rooms x n=32, 8 turns. LEAFE explores 64 train rooms x 48 turns (3,072 env
#     steps); GRPO 12 steps x 4 rooms x 8 episodes (<= 3,072); Early Experience 32 rooms x 4 expert
#     states x (1 + 2 alternatives). Hours on 2 cores.
#   ENV=coding: 16 generated problems x n=32, 3 submissions. LEAFE explores 64 train problems x 12
#     submissions (768 env steps); GRPO 12 steps x 4 problems x 8 episodes (<= 1,152); Early
#     Experience 64 reference solutions x 4 alternatives. About 2.5 hours on 2 cores.
# Usage, with leafe's virtualenv active: bash bench/baselines.sh ENV OUT_DIR [STAGE...] (from a
# frozen checkout: `git worktree add --detach /tmp/wt HEAD`; every stage resumes when rerun).
# STAGEs (default: all, in this order): leafe ee-iwm ee-iwm-eval ee-sr ee-sr-eval grpo grpo-eval
# leafe-from-grpo reflexion. Two shells with OMP_NUM_THREADS=1 can run disjoint stage lists side by
# side (grpo before leafe-from-grpo, ee-X before ee-X-eval). GRPO_ARGS adds overrides to the grpo
# stage, e.g. GRPO_ARGS="grpo.learning_rate=1e-4 grpo.micro_batch_size=2". Then the tables and the plot:
#   leafe compare leafe=OUT_DIR/leafe grpo=OUT_DIR/grpo-eval ee-iwm=OUT_DIR/ee-iwm-eval ... --out OUT_DIR/compare
#   python bench/training_budgets.py leafe=OUT_DIR/leafe grpo=OUT_DIR/grpo ee-iwm=OUT_DIR/ee-iwm ...
set -e
env=${1:?usage: bench/baselines.sh sokoban|coding OUT_DIR}
out=${2:?usage: bench/baselines.sh sokoban|coding OUT_DIR}
eval_cfg=configs/${env}_leafe.yaml
for cfg in "$eval_cfg" "configs/${env}_grpo.yaml" "configs/${env}_early_experience.yaml"; do
  [ -f "$cfg" ] || { echo "bench/baselines.sh: $cfg not found (ENV is sokoban or coding)" >&2; exit 2; }
done
shift 2
all="leafe ee-iwm ee-iwm-eval ee-sr ee-sr-eval grpo grpo-eval leafe-from-grpo reflexion"
stages=" ${*:-$all} "
for stage in $stages; do
  [[ " $all " == *" $stage "* ]] || { echo "bench/baselines.sh: unknown stage $stage (stages: $all)" >&2; exit 2; }
done
mkdir -p "$out"
step() {  # name, then the leafe command line; skipped unless the stage was asked for
  name=$1; shift
  [[ "$stages" == *" $name "* ]] || return 0
  for log in "$out/$name.out" "$out/$name.err"; do  # a rerun keeps the previous logs
    [ -f "$log" ] && mv "$log" "$log.$(date +%s)"
  done
  /usr/bin/time -v python -m leafe.cli "$@" output_dir="$out" > "$out/$name.out" 2> "$out/$name.err"
}
step leafe run "$eval_cfg" name=leafe
step ee-iwm early-experience "configs/${env}_early_experience.yaml" name=ee-iwm
step ee-iwm-eval eval "$eval_cfg" name=ee-iwm-eval policy.model="$out/ee-iwm/model"
step ee-sr early-experience "configs/${env}_early_experience.yaml" name=ee-sr early_experience.variant=sr
step ee-sr-eval eval "$eval_cfg" name=ee-sr-eval policy.model="$out/ee-sr/model"
# shellcheck disable=SC2086  # GRPO_ARGS is a list of overrides
step grpo grpo "configs/${env}_grpo.yaml" name=grpo grpo.steps=12 ${GRPO_ARGS:-}
step grpo-eval eval "$eval_cfg" name=grpo-eval policy.model="$out/grpo/model"
step leafe-from-grpo run "$eval_cfg" name=leafe-from-grpo run.init_from="$out/grpo" run.eval_base=false
# Inference-time reflection (Reflexion-style) with the reflector LEAFE explored with: up to 3 attempts per sample
step reflexion eval "$eval_cfg" name=reflexion eval.method=reflexion eval.budget_episodes=3 explore.reflector=env
