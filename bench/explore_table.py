"""The equal-budget exploration comparison as markdown, from finished ``leafe explore`` runs.

    .venv/bin/python bench/explore_table.py /work/explore/{independent,refinement-env,leafe-env}

For each run directory (``explore_summary.json`` + ``trees.jsonl``): rooms solved, corrected
branches that succeeded, distinct successful trajectories, successes per 1,000 env steps, the
budget spent, the reflections, and the *steps to the first success* of each solved task (env
steps of the attempts started before the successful one, in the order they were created, plus
the successful attempt's own; a proxy for "does this schedule save steps"). Then which tasks
each run solved, and a two-sided sign test of each run against the first one on the tasks where
they disagree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from math import comb
from pathlib import Path


def steps_to_first_success(tree: dict) -> int | None:
    """Env steps a tree spent up to and including its first successful attempt (``None``: none)."""
    spent = 0
    for node in sorted(tree["nodes"], key=lambda n: n["node_id"]):
        spent += len(node["steps"])
        if node["outcome"] == "success":
            return spent
    return None


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value for ``wins`` vs ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="leafe explore run directories")
    args = parser.parse_args()
    solved: dict[str, set[str]] = {}
    print(
        "| run | method | reflector | trigger | rooms solved | successful corrected branches | distinct successful "
        "trajectories | successes / 1k env steps | env steps | model tokens (reflection) | reflections | rollback steps "
        "| steps to first success, median (mean) |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        summary_file, trees_file = run / "explore_summary.json", run / "trees.jsonl"
        if not summary_file.is_file() or not trees_file.is_file():
            sys.exit(f"{run}: no explore_summary.json / trees.jsonl (not a finished leafe explore run)")
        record = json.loads(summary_file.read_text())
        s, settings = record["summary"], record["explore"]
        trees = [json.loads(line) for line in trees_file.read_text().splitlines() if line.strip()]
        solved[run.name] = {t["task"]["task_id"] for t in trees if t["summary"]["solved"]}
        firsts = [x for x in map(steps_to_first_success, trees) if x is not None]
        first = f"{statistics.median(firsts):g} ({statistics.mean(firsts):.1f})" if firsts else "-"
        reflector = s["reflector"] or "-"
        trigger = settings["trigger"] if s["reflector"] else "-"
        print(
            f"| {run.name} | {s['method']} | {reflector} | {trigger} | {s['solved_tasks']}/{s['tasks']} "
            f"({100 * s['coverage']:.1f}%) | {s['successful_corrected_branches']} | "
            f"{s['distinct_successful_trajectories']} | {s['successes_per_1k_env_steps']:.1f} | {s['env_steps']:,} | "
            f"{s['model_tokens']:,} ({s['reflection_tokens']:,}) | {s['reflections']} | {s['rollback_env_steps']} | {first} |"
        )
    print()
    reference = args.runs[0].name
    for name, tasks in solved.items():
        ids = ", ".join(sorted(t.rsplit("/", 1)[-1] for t in tasks))
        wins, losses = len(tasks - solved[reference]), len(solved[reference] - tasks)
        versus = "" if name == reference else f"; vs {reference}: +{wins} -{losses}, sign test p = {sign_test(wins, losses):.2f}"
        print(f"- {name}: {ids}{versus}")


if __name__ == "__main__":
    main()
