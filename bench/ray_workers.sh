#!/usr/bin/env bash
# One process (2 torch threads) against Ray workers (1 CPU, 1 thread each) on the same evaluation,
# side by side in one run; checks the episodes are identical and prints wall time per run.
#   bash bench/ray_workers.sh OUT_DIR [CONFIG] [extra overrides...]
# Default config: the quickstart's evaluation (8 test rooms x 8 samples, embedded model, native).
set -euo pipefail
out=${1:?usage: bash bench/ray_workers.sh OUT_DIR [CONFIG] [overrides...]}
config=${2:-configs/sokoban_quickstart.yaml}
shift $(( $# >= 2 ? 2 : 1 ))
leafe=${LEAFE:-.venv/bin/leafe}
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
for workers in 1 2; do
    start=$(date +%s.%N)
    "$leafe" eval "$config" name="workers-$workers" output_dir="$out" workers.num="$workers" workers.cpus=1 "$@" \
        > "$out/workers-$workers.stdout" 2> "$out/workers-$workers.stderr"
    end=$(date +%s.%N)
    echo "workers.num=$workers  wall $(awk "BEGIN {print $end - $start}") s" | tee -a "$out/summary.txt"
done
"$python" - "$out" <<'PY' | tee -a "$out/summary.txt"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def episodes(name):
    lines = (out / name / "episodes.jsonl").read_text().splitlines()
    return {(r["task"]["task_id"], r["sample_index"]): [s["completion"] for s in r["steps"]] for r in map(json.loads, lines)}
one, two = episodes("workers-1"), episodes("workers-2")
same = sum(one[key] == two.get(key) for key in one)
print(f"identical episodes: {same}/{len(one)}")
for name in ("workers-1", "workers-2"):
    metrics = json.loads((out / name / "metrics.json").read_text())
    t = metrics["details"]["throughput_this_invocation"]
    print(f"{name}: episodes {t['episodes']}, play {t['seconds']} s, {t['generated_tokens_per_s']} generated tok/s, "
          f"Pass@k {[round(m, 4) for m in metrics['mean']]}")
PY
