"""Shop environment alone: catalogue size, task counts, env steps/s, random-walk floor.

    .venv/bin/python bench/shop_env.py configs/shop_quickstart.yaml --tasks 100 --runs 5

Uses the config's env section and rollout.max_steps and the test tasks ``leafe eval`` plays.
Steps/s is the median over ``--runs`` runs of (env steps / wall time) for three workloads:
expert episodes (their searches are cached after the first run, as repeated queries are in
evaluation), random walks (a random clickable, or on the search page a search with random
instruction words: the floor a policy should clear, with its mean reward and success rate), and
the expert episodes through the WebShop client against the local test server
(``tests/envs/webshop_server.py``, real HTTP on localhost).
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
from leafe.envs.shop import ShopEnv  # noqa: E402
from leafe.envs.shop_catalog import build_catalog, goal_of  # noqa: E402
from leafe.envs.webshop import WebshopEnv  # noqa: E402
from leafe.types import Task  # noqa: E402
from tests.envs.webshop_server import running_server  # noqa: E402


def _random_action(env, rng: random.Random, instruction: str) -> str:
    page = env.page()
    if page.kind == "search":
        words = instruction.split()
        return f"search[{' '.join(rng.sample(words, min(len(words), rng.randint(2, 5))))}]"
    return f"click[{rng.choice(page.clickables())}]"


def _expert_run(make_env, tasks, plans) -> tuple[int, float]:
    env, steps, start = make_env(), 0, time.perf_counter()
    for task, plan in zip(tasks, plans):
        env.reset(task)
        for action in plan:
            env.step(action)
            steps += 1
    return steps, time.perf_counter() - start


def _random_run(make_env, tasks, max_steps: int, seed: int) -> tuple[int, float, list[float], list[bool]]:
    env, rng, steps, rewards, wins = make_env(), random.Random(seed), 0, [], []
    start = time.perf_counter()
    for task in tasks:
        _, info = env.reset(task)
        instruction = goal_of(task)[1].instruction
        reward, won = 0.0, False
        for _ in range(max_steps):
            _, reward, terminated, _, info = env.step(_random_action(env, rng, instruction))
            steps += 1
            if terminated:
                won = info["success"]
                break
        rewards.append(reward)
        wins.append(won)
    return steps, time.perf_counter() - start, rewards, wins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, as for leafe eval")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    env_cfg = cfg.env

    build_catalog.cache_clear()
    start = time.perf_counter()
    catalog = build_catalog(env_cfg.catalog_seed, env_cfg.num_products)
    built = time.perf_counter() - start
    start = time.perf_counter()
    catalog.search("warm up the index")
    indexed = time.perf_counter() - start
    make_env, source = build_env(env_cfg)
    counts = {split: len(source.tasks(split)) for split in ("train", "test")}
    print(f"catalogue: {len(catalog.products)} products, built in {built:.3f} s, BM25 index in {indexed:.3f} s")
    print(f"tasks: train {counts['train']}, test {counts['test']} (one goal per product)")

    rng = random.Random(0)
    words = " ".join(goal_of(task)[1].instruction for task in source.tasks("test", 50)).split()
    latencies = []
    for _ in range(50):
        query = " ".join(rng.sample(words, 4))
        start = time.perf_counter()
        catalog.search(query)
        latencies.append(time.perf_counter() - start)
    print(f"search of a new query: median {1000 * statistics.median(latencies):.2f} ms (50 queries; repeated queries are cached)")

    tasks = select_tasks(source, "test", args.tasks)
    plans = [make_env().expert_actions(task) for task in tasks]
    print(f"expert demonstrations: mean length {statistics.mean(map(len, plans)):.2f} actions")
    expert = [_expert_run(make_env, tasks, plans) for _ in range(args.runs)]
    print(f"expert episodes: {statistics.median(s / t for s, t in expert):.0f} steps/s (median of {args.runs} runs, {expert[0][0]} steps each)")
    walks = [_random_run(make_env, tasks, cfg.rollout.max_steps, seed) for seed in range(args.runs)]
    rewards = [r for _, _, rs, _ in walks for r in rs]
    wins = [w for _, _, _, ws in walks for w in ws]
    print(
        f"random walks: {statistics.median(s / t for s, t, _, _ in walks):.0f} steps/s; "
        f"mean reward {statistics.mean(rewards):.3f}, success {100 * statistics.mean(wins):.1f}% "
        f"({len(rewards)} walks of at most {cfg.rollout.max_steps} steps)"
    )

    with running_server(env_cfg.catalog_seed, env_cfg.num_products) as base_url:
        index = {product.asin: i for i, product in enumerate(catalog.products)}
        web_tasks = [Task(t.task_id, t.split, {"goal_index": index[t.params["asin"]]}) for t in tasks]
        web_plans = [ShopEnv(page_size=10).expert_actions(task) for task in tasks]  # the site shows 10 a page
        client = [_expert_run(lambda: WebshopEnv(base_url), web_tasks, web_plans) for _ in range(args.runs)]
        print(f"webshop client + local server: {statistics.median(s / t for s, t in client):.0f} steps/s (median of {args.runs} runs)")


if __name__ == "__main__":
    main()
