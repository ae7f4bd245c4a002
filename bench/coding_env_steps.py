"""Steps/s of the coding environment alone (no model): each step is one sandboxed judgement.

    .venv/bin/python bench/coding_env_steps.py                      # generated problems
    .venv/bin/python bench/coding_env_steps.py --source humaneval --tasks 40

Submits, to every task of both splits (or the first ``--tasks`` of each), the reference
solution (runs every test), a wrong program (stops at the first failing test) and a syntax error
(judged without the sandbox), and prints steps/s and ms/step for each kind, the number of tasks
per split, and the sandbox isolation in force.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.envs.coding import CodingEnv, load_problems  # noqa: E402
from leafe.envs.coding_tasks import CodingTasks  # noqa: E402
from leafe.sandbox import sandbox_status  # noqa: E402

WRONG = "def f(*args):\n    return None\nprint(input())\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="generated", choices=["generated", "humaneval"])
    parser.add_argument("--tasks", type=int, default=None, help="tasks per split (default: all)")
    args = parser.parse_args()
    status = sandbox_status()
    source = CodingTasks(args.source, load_problems(args.source))
    tasks = source.tasks("train", None)[: args.tasks] + source.tasks("test", None)[: args.tasks]
    env = CodingEnv(source.problems)
    print(f"source {args.source}: {len(source.tasks('train'))} train / {len(source.tasks('test'))} test problems; "
          f"isolation {status.isolation}, uid {status.uid}, interpreter {status.python}")
    for kind in ("reference", "wrong", "syntax error"):
        durations, solved = [], 0
        for task in tasks:
            env.reset(task)
            program = {"reference": env.expert_actions(task)[0], "wrong": WRONG, "syntax error": "def f(:"}[kind]
            started = time.perf_counter()
            *_, info = env.step(program)
            durations.append(time.perf_counter() - started)
            solved += info["success"]
        total = sum(durations)
        print(f"{kind:>12}: {len(tasks)} steps, {len(tasks) / total:7.1f} steps/s, median "
              f"{1000 * statistics.median(durations):7.1f} ms/step, solved {solved}/{len(tasks)}")


if __name__ == "__main__":
    main()
