"""Pass@k of an unfinished ``leafe eval`` run, over the tasks whose n episodes all finished.

    .venv/bin/python bench/partial_passk.py runs/coding-generated-k32

Reads RUN_DIR/config.yaml and RUN_DIR/episodes.jsonl, keeps the tasks with
``eval.samples_per_task`` finished episodes, and prints the same estimator ``leafe eval`` uses
(unbiased Pass@k, bootstrap over tasks) plus episode statistics. Rerunning ``leafe eval`` on the
same config resumes the run and reports all tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.config import load_config  # noqa: E402
from leafe.eval.passk import compute_pass_at_k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    cfg = load_config(args.run_dir / "config.yaml")
    records = [json.loads(line) for line in (args.run_dir / "episodes.jsonl").read_text().splitlines() if line.strip()]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_task[record["task"]["task_id"]].append(record)
    n = cfg.eval.samples_per_task
    complete = {task_id: episodes for task_id, episodes in by_task.items() if len(episodes) == n}
    counts = {task_id: (n, sum(e["success"] for e in episodes)) for task_id, episodes in complete.items()}
    print(f"{len(records)} episodes finished; {len(complete)} of {cfg.eval.num_tasks} tasks complete (n={n})")
    if not counts:
        return
    result = compute_pass_at_k(counts, cfg.eval.ks, cfg.eval.num_bootstrap, cfg.eval.confidence, cfg.seed)
    for k, mean, low, high in zip(result.ks, result.mean, result.ci_low, result.ci_high):
        print(f"Pass@{k}: {100 * mean:.1f}% [{100 * low:.1f}, {100 * high:.1f}]")
    episodes = [e for task in complete.values() for e in task]
    steps = [len(e["steps"]) for e in episodes]
    parse_failures = sum(s["action"] is None for e in episodes for s in e["steps"])
    print(f"mean episode length {sum(steps) / len(steps):.2f} turns; {parse_failures / sum(steps):.1%} of turns "
          f"had no program; per task (solved/n): " + ", ".join(f"{t.split('/', 2)[2]} {c}" for t, (_, c) in counts.items()))


if __name__ == "__main__":
    main()
