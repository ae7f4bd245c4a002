"""Sokoban environment alone: wall time per random-walk step (reset amortised in), no model.

    .venv/bin/python bench/sokoban_env_steps.py

10 test rooms of configs/sokoban_quickstart.yaml x 20 random walks of at most 8 moves, 5 runs;
prints the median over runs of (wall time / steps).
"""

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.config import load_config  # noqa: E402
from leafe.envs import build_env  # noqa: E402


def main() -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "sokoban_quickstart.yaml"
    make_env, source = build_env(load_config(config).env)
    tasks = source.tasks("test", 10)
    env, rng = make_env(), random.Random(0)
    per_step: list[float] = []
    for _run in range(5):
        start, steps = time.perf_counter(), 0
        for task in tasks:
            for _walk in range(20):
                env.reset(task)
                for _move in range(8):
                    steps += 1
                    if env.step(rng.choice(["up", "down", "left", "right"]))[2]:  # terminated
                        break
        per_step.append((time.perf_counter() - start) / steps)
    print(f"random-walk steps: median {statistics.median(per_step) * 1e6:.1f} us per step (reset included), {steps} steps per run, 5 runs")


if __name__ == "__main__":
    main()
