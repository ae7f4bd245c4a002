"""Pass@k of a uniform random walker on the Sokoban test rooms: the floor any policy should beat.

    .venv/bin/python bench/random_walk_sokoban.py --tasks 20 --samples 16 --max-steps 8 --seed 0

Same rooms (the default env config's test split), same budget and the same Pass@k estimator as
``leafe eval``; each turn is one of up/down/left/right, uniformly at random.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.agent import select_tasks  # noqa: E402
from leafe.config import config_from_dict  # noqa: E402
from leafe.envs import build_env  # noqa: E402
from leafe.eval.passk import compute_pass_at_k  # noqa: E402
from leafe.eval.report import print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    make_env, source = build_env(config_from_dict({}).env)
    rng = random.Random(args.seed)
    counts = {}
    for task in select_tasks(source, "test", args.tasks):
        successes = 0
        for _ in range(args.samples):
            env = make_env()
            env.reset(task)
            for _ in range(args.max_steps):
                _obs, _reward, terminated, _truncated, info = env.step(rng.choice(("up", "down", "left", "right")))
                if terminated:
                    break
            successes += bool(info["success"])
        counts[task.task_id] = (args.samples, successes)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= args.samples]
    print_table({"random walk": compute_pass_at_k(counts, ks, seed=args.seed)})


if __name__ == "__main__":
    main()
