"""Rollout throughput of the core loop: model + Sokoban, and Sokoban alone.

    .venv/bin/python bench/rollout_throughput.py                      # 32 episodes, default model
    .venv/bin/python bench/rollout_throughput.py --episodes 64 --backend transformers

Prints generated tokens/s, prompt tokens/s, environment steps/s and peak RSS for the full loop
(prompting, batched generation, parsing, env steps), then the environment's own steps/s with a
random policy (no model) for scale.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.config import config_from_dict  # noqa: E402
from leafe.envs import build_env  # noqa: E402
from leafe.agent import build_agent  # noqa: E402
from leafe.policy import load_policy  # noqa: E402
from leafe.policy.memory import peak_rss_mib  # noqa: E402
from leafe.rollout import make_jobs, run_episodes  # noqa: E402


def env_only(make_env, tasks, steps: int, seed: int = 0) -> float:
    """Environment steps per second under uniformly random actions (resets included)."""
    rng = random.Random(seed)
    env, words = make_env(), ("up", "down", "left", "right")
    done, started = True, time.perf_counter()
    for index in range(steps):
        if done:
            env.reset(tasks[index % len(tasks)])
        _obs, _reward, terminated, truncated, _info = env.step(rng.choice(words))
        done = terminated or truncated
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32, help="episodes (4 per task)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16, help="policy.max_batch_size")
    args = parser.parse_args()

    cfg = config_from_dict(
        {
            "policy": {"backend": args.backend, "max_batch_size": args.batch_size, "max_new_tokens": 40},
            "rollout": {"max_steps": args.max_steps, "history_window": 1, "max_concurrent_episodes": args.episodes},
        }
    )
    make_env, task_source = build_env(cfg.env)
    tasks = task_source.tasks("test", max(1, args.episodes // 4))
    policy = load_policy(cfg.policy)
    agent = build_agent(cfg, make_env, task_source, policy)
    jobs = make_jobs(tasks, 4, cfg.seed)[: args.episodes]

    started = time.perf_counter()
    trajectories = run_episodes(
        jobs, make_env, policy, agent.prompter, agent.sampling,
        max_steps=agent.max_steps, max_concurrent=cfg.rollout.max_concurrent_episodes,
    )
    seconds = time.perf_counter() - started
    steps = [step for t in trajectories for step in t.steps]
    generated = sum(s.completion_tokens for s in steps)
    prompt = sum(s.prompt_tokens for s in steps)
    env_steps = sum(s.action is not None for s in steps)
    print(f"backend={policy.name} episodes={len(trajectories)} turns={len(steps)} wall={seconds:.1f}s")
    print(f"generated tokens/s   {generated / seconds:8.1f}   ({generated} tokens)")
    print(f"prompt tokens/s      {prompt / seconds:8.1f}   ({prompt} tokens, median prompt {statistics.median(s.prompt_tokens for s in steps):.0f})")
    print(f"env steps/s          {env_steps / seconds:8.2f}   ({env_steps} steps; {len(steps) - env_steps} unparseable turns)")
    print(f"peak RSS             {peak_rss_mib():8.0f} MiB")
    print(f"env alone steps/s    {env_only(make_env, tasks, 20000):8.0f}   (random actions, no model)")


if __name__ == "__main__":
    main()
