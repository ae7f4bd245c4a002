"""Household environment alone: task counts, compile/reset/step/snapshot times, random-walk Pass@k.

    .venv/bin/python bench/household_env.py configs/household_quickstart.yaml --tasks 8 --samples 32

Uses the config's env section and rollout.max_steps, the test tasks ``leafe eval`` plays, and the
same Pass@k estimator. The random walker picks uniformly among the valid actions an observation
lists by name (what the model is shown), so its Pass@k is the floor a policy should clear.
Timings are wall-clock medians over the calls made here (environment only, no model).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.agent import select_tasks  # noqa: E402
from leafe.config import load_config  # noqa: E402
from leafe.envs import build_env  # noqa: E402
from leafe.envs.household_games import ensure_game  # noqa: E402
from leafe.envs.household_scenes import make_spec, spec_for, task_type_counts  # noqa: E402
from leafe.eval.passk import compute_pass_at_k  # noqa: E402
from leafe.eval.report import print_table  # noqa: E402


def _ms(samples: list[float]) -> str:
    return f"{1000 * statistics.median(samples):.2f} ms (n={len(samples)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, as for leafe eval")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scan", type=int, default=2000, help="generator seeds scanned to count distinct games")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    make_env, source = build_env(cfg.env)
    max_steps = cfg.rollout.max_steps

    started = time.perf_counter()
    distinct: dict[str, set[str]] = {"train": set(), "test": set()}
    for seed in range(args.scan):  # how many distinct games the first seeds hold (no compiling)
        spec = make_spec(seed, source.settings)
        distinct[source.split_of(spec)].add(spec.to_json())
    print(f"seeds 0..{args.scan - 1}: {len(distinct['train'])} train + {len(distinct['test'])} test distinct games "
          f"({time.perf_counter() - started:.1f} s)")
    print("task types of the first 100 test tasks:", task_type_counts(source.tasks("test", 100)))

    tasks = select_tasks(source, "test", args.tasks)
    compile_times = []
    for task in tasks:
        begin = time.perf_counter()
        story = ensure_game(spec_for(task))
        compile_times.append(time.perf_counter() - begin)
    print(f"ensure_game (cached games take ~0 ms; first compile ~0.5 s): {_ms(compile_times)}; cache {story.parent}")
    walk = [len(spec_for(task).walkthrough()) for task in tasks]
    print(f"walkthrough length on the {len(tasks)} test tasks: mean {statistics.mean(walk):.2f}, min {min(walk)}, max {max(walk)}")

    rng = random.Random(args.seed)
    counts, lengths = {}, []
    make, reset, step, snap, restore = [], [], [], [], []
    for task in tasks:
        successes = 0
        for _ in range(args.samples):
            begin = time.perf_counter()
            env = make_env()
            make.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            env.reset(task)
            reset.append(time.perf_counter() - begin)
            info: dict = {}
            turns = 0
            for turns in range(1, max_steps + 1):
                action = rng.choice(env.listed_actions())
                begin = time.perf_counter()
                _, _, terminated, _, info = env.step(action)
                step.append(time.perf_counter() - begin)
                if terminated:
                    break
            begin = time.perf_counter()
            state = env.snapshot()
            snap.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            env.restore(state)
            restore.append(time.perf_counter() - begin)
            successes += bool(info.get("success"))
            lengths.append(turns)
        counts[task.task_id] = (args.samples, successes)
    print(f"make_env {_ms(make)}, reset {_ms(reset)}, step {_ms(step)} "
          f"(= {1 / statistics.median(step):.0f} steps/s), snapshot {_ms(snap)}, restore {_ms(restore)}")
    print(f"random walk: {sum(c for _, c in counts.values())}/{len(lengths)} episodes solved, "
          f"mean episode length {statistics.mean(lengths):.2f} turns (budget {max_steps})")
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= args.samples]
    print_table({"random walk": compute_pass_at_k(counts, ks, seed=args.seed)})


if __name__ == "__main__":
    main()
