"""The issue 6 table from finished ``leafe eval`` runs: one row per run directory.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.config import load_config  # noqa: E402
from leafe.envs import build_env  # noqa: E402


def split_sizes(run_dir: Path) -> str:
    """``train / test`` task counts of the run's task source (a ``leafe run`` stage directory
    takes its parent's config)."""
    config = run_dir / "config.yaml" if (run_dir / "config.yaml").exists() else run_dir.parent / "config.yaml"
    _make_env, source = build_env(load_config(config).env)
    sizes = []
    for split in ("train", "test"):
        try:
            sizes.append(str(len(source.tasks(split))))
        except ValueError:  # an infinite generator
            sizes.append("generated")
    return " / ".join(sizes)


def mean_return(run_dir: Path) -> float:
    """Mean over the run's episodes of the sum of their step rewards."""
    returns = []
    for line in (run_dir / "episodes.jsonl").read_text().splitlines():
        if line.strip():
            returns.append(sum(step["reward"] for step in json.loads(line)["steps"]))
    return sum(returns) / len(returns)


def row(run_dir: Path) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    details = metrics["details"]
    cell = lambda i: f"{100 * metrics['mean'][i]:.1f} [{100 * metrics['ci_low'][i]:.1f}, {100 * metrics['ci_high'][i]:.1f}]"  # noqa: E731
    ks = metrics["ks"]
    at8 = cell(ks.index(8)) if 8 in ks and ks[-1] != 8 else ""
    throughput = details["throughput_this_invocation"]
    return (
        f"| {details['env']} | {split_sizes(run_dir)} | {metrics['num_tasks']} x {metrics['samples_per_task']} | "
        f"{details['max_steps']} | {cell(0)} | {at8} | {cell(len(ks) - 1)} (k={ks[-1]}) | {mean_return(run_dir):.3f} | {details['mean_steps']} | "
        f"{throughput['env_steps_per_s']} |"
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
