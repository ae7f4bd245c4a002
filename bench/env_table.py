"""The issue 6 table from ``leafe eval`` runs: one row per run directory (an unfinished run is
scored on the tasks whose samples all finished, with the estimator ``leafe eval`` uses).

    .venv/bin/python bench/env_table.py /work/envtable/shop /work/envtable/household ...

Columns: environment, task counts per split (``generated`` for sources without an end), the
evaluation's tasks x samples, Pass@1 and Pass@k (95% bootstrap CI over tasks) for k = 8 and the
largest k, the mean episode return (sum of rewards: partial credit for the shop and ScienceWorld),
average episode length in model turns, and environment steps per second during that evaluation
(model time included: the rate the loop achieved, not the environment alone).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.config import load_config  # noqa: E402
from leafe.envs import build_env  # noqa: E402
from leafe.eval.passk import compute_pass_at_k  # noqa: E402


def split_sizes(config: Path) -> str:
    """``train / test`` task counts of the config's task source."""
    _make_env, source = build_env(load_config(config).env)
    sizes = []
    for split in ("train", "test"):
        try:
            sizes.append(str(len(source.tasks(split))))
        except ValueError:  # an infinite generator
            sizes.append("generated")
    return " / ".join(sizes)


def complete_episodes(run_dir: Path, n: int) -> list[dict]:
    """The episodes of the tasks whose ``n`` samples all finished (an unfinished run keeps them)."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for line in (run_dir / "episodes.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_task[record["task"]["task_id"]].append(record)
    return [episode for episodes in by_task.values() if len(episodes) == n for episode in episodes]


def row(run_dir: Path) -> str:
    """One table row; an unfinished run (no metrics.json) is scored on its complete tasks."""
    config = run_dir / "config.yaml" if (run_dir / "config.yaml").exists() else run_dir.parent / "config.yaml"
    cfg = load_config(config)
    n = cfg.eval.samples_per_task
    if (run_dir / "metrics.json").exists():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        speed = metrics["details"]["throughput_this_invocation"]["env_steps_per_s"]
        tasks = f"{metrics['num_tasks']} x {n}"
    else:
        episodes = complete_episodes(run_dir, n)
        if not episodes:
            return f"| {cfg.env.name} | {split_sizes(config)} | no task has its {n} samples finished yet | | | | | | | |"
        counts: dict[str, list[int]] = defaultdict(lambda: [n, 0])
        for episode in episodes:
            counts[episode["task"]["task_id"]][1] += int(episode["success"])
        result = compute_pass_at_k({t: tuple(c) for t, c in counts.items()}, cfg.eval.ks, cfg.eval.num_bootstrap, cfg.eval.confidence, cfg.seed)
        metrics = result.to_dict()
        speed = "-"
        tasks = f"{len(counts)} x {n} (of {cfg.eval.num_tasks}: run stopped)"
    episodes = complete_episodes(run_dir, n)
    mean_return = sum(sum(step["reward"] for step in e["steps"]) for e in episodes) / len(episodes)
    mean_turns = sum(len(e["steps"]) for e in episodes) / len(episodes)
    cell = lambda i: f"{100 * metrics['mean'][i]:.1f} [{100 * metrics['ci_low'][i]:.1f}, {100 * metrics['ci_high'][i]:.1f}]"  # noqa: E731
    ks = metrics["ks"]
    at8 = cell(ks.index(8)) if 8 in ks and ks[-1] != 8 else ""
    return (
        f"| {cfg.env.name} | {split_sizes(config)} | {tasks} | {cfg.rollout.max_steps} | {cell(0)} | {at8} | "
        f"{cell(len(ks) - 1)} (k={ks[-1]}) | {mean_return:.3f} | {mean_turns:.2f} | {speed} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    args = parser.parse_args()
    print("| environment | tasks train / test | eval tasks x n | turn budget | Pass@1 % | Pass@8 % | Pass@k % | mean return | mean turns | env steps/s (eval) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for run_dir in args.run_dirs:
        print(row(run_dir))


if __name__ == "__main__":
    main()
