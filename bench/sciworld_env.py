"""ScienceWorld environment alone: JVM start, task counts, reset and step times, JVM memory.

    .venv/bin/python bench/sciworld_env.py configs/sciworld_quickstart.yaml --tasks 16 --live 64

Uses the config's env section. Steps are the gold paths of the first ``--tasks`` test variations
(environment only, no model); times are wall-clock medians. ``--live`` environments are then
reset at once (as concurrent episodes are) to measure the JVM's resident memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.config import load_config  # noqa: E402
from leafe.envs import build_env  # noqa: E402


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--live", type=int, default=64)
    args = parser.parse_args()
    cfg = load_config(args.config)
    started = time.perf_counter()
    make_env, source = build_env(cfg.env)
    env = make_env()
    print(f"JVM start + first simulator: {time.perf_counter() - started:.2f} s")
    print(f"tasks: train {len(source.tasks('train'))}, test {len(source.tasks('test'))} ({cfg.env.test_split} variations)")
    resets, steps, lengths = [], [], []
    for task in source.tasks("test", args.tasks):
        gold = env.expert_actions(task)
        began = time.perf_counter()
        env.reset(task)
        resets.append(time.perf_counter() - began)
        for action in gold:
            began = time.perf_counter()
            *_rest, info = env.step(action)
            steps.append(time.perf_counter() - began)
        lengths.append(len(gold))
        assert info["success"], f"{task.task_id}: the gold path did not solve it"
    print(f"gold path length: median {statistics.median(lengths)}, range {min(lengths)}-{max(lengths)}")
    print(f"reset: median {1000 * statistics.median(resets):.0f} ms; step: median {1000 * statistics.median(steps):.1f} ms "
          f"({len(steps) / sum(steps):.0f} steps/s over {len(steps)} steps)")
    from leafe.envs.sciworld import _Simulator

    live = [make_env() for _ in range(args.live)]
    tasks = source.tasks("test", min(args.live, len(source.tasks("test"))))
    for index, live_env in enumerate(live):
        live_env.reset(tasks[index % len(tasks)])
    pid = _Simulator.get()._env._gateway.java_process.pid
    print(f"JVM resident memory with {args.live} live episodes: {_rss_mib(pid):.0f} MiB")


if __name__ == "__main__":
    main()
