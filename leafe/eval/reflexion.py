"""``leafe eval ... eval.method=reflexion``: inference-time reflection (Reflexion-style), with its cost.

Each of the n samples of a task is a chain of attempts: the first attempt is an ordinary episode;
after a failed one, the reflector of the ``explore`` section (``self`` by default) reads it and
writes a lesson, and the next attempt starts from ``reset`` with the lessons so far in its prompt.
A chain ends at its first success or when it has spent ``eval.budget_episodes * rollout.max_steps``
turns. A sample counts as solved if any attempt of its chain succeeded, so Pass@k is over chains.

This is the iterative-refinement baseline of exploration (:func:`leafe.method.explore.
iterative_refinement`, without restarts) run on test tasks: chains are explored as tasks named
``<task_id>#<sample>``, stored in ``trees.jsonl`` (so a killed run resumes at the next
unfinished chain and ``leafe view`` shows them), and cost is reported next to Pass@k:
environment steps and model tokens (reflections included) per sample and per task.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from leafe.agent import Agent
from leafe.config import ExperimentConfig
from leafe.eval.passk import PassAtK, compute_pass_at_k
from leafe.eval.report import print_table, write_report
from leafe.method.explore import make_reflector, run_method
from leafe.method.tree import ExperienceTree
from leafe.runs import RunDir
from leafe.types import Task

logger = logging.getLogger(__name__)

CHAINS_FILE = "trees.jsonl"  # the format of exploration trees, so `leafe view` draws the chains


def chain_tasks(tasks: Sequence[Task], samples: int) -> list[Task]:
    """One task per (task, sample): the same environment instance under the id ``<task_id>#<s>``
    (environments read ``params``; the id only keys the chain and derives its seeds)."""
    return [Task(f"{task.task_id}#{s}", task.split, dict(task.params)) for task in tasks for s in range(samples)]


def evaluate_reflexion(
    cfg: ExperimentConfig, run: RunDir, agent: Agent, tasks: Sequence[Task], reflector_policy: Any = None
) -> PassAtK:
    """Play the missing chains, then write Pass@k and the cost of inference-time reflection."""
    budget = cfg.eval.budget_episodes * agent.max_steps
    settings = cfg.explore.model_copy(
        update={
            "max_env_steps": budget,
            "max_model_tokens": None,
            "restart": False,  # one chain per sample: stop at the first success
            "max_tasks_in_flight": max(1, cfg.rollout.max_concurrent_episodes),
        }
    )
    chains = chain_tasks(tasks, cfg.eval.samples_per_task)
    reflector = make_reflector(settings, agent, reflector_policy)
    with tqdm(total=len(chains), desc="reflexion chains", unit="chain") as bar:

        def done(tree: ExperienceTree) -> None:
            bar.update(1)

        trees = run_method("refinement", chains, agent, settings, cfg.seed, run.path / CHAINS_FILE, reflector, on_tree=done)
    counts: dict[str, tuple[int, int]] = {}
    for task, tree in zip((task for task in tasks for _ in range(cfg.eval.samples_per_task)), trees):
        n, c = counts.get(task.task_id, (0, 0))
        counts[task.task_id] = (n + 1, c + int(tree.summary().solved))
    result = compute_pass_at_k(counts, cfg.eval.ks, num_bootstrap=cfg.eval.num_bootstrap, confidence=cfg.eval.confidence, seed=cfg.seed)
    details = reflexion_details(cfg, trees, budget)
    name = f"{cfg.policy.model} + reflexion"
    write_report(result, run.path, title=f"{cfg.name}: {name} on {cfg.env.name} ({cfg.eval.split})", details=details, name=name)
    print_table({name: result})
    logger.info("reflexion eval done: %s", details)
    return result


def reflexion_details(cfg: ExperimentConfig, trees: Sequence[ExperienceTree], budget: int) -> dict[str, Any]:
    """What the chains cost: per sample (chain) and per task (n chains), means over the run."""
    summaries = [tree.summary() for tree in trees]
    chains = len(summaries)
    mean = lambda values: round(sum(values) / chains, 2)  # noqa: E731
    return {
        "model": cfg.policy.model,
        "env": cfg.env.name,
        "split": cfg.eval.split,
        "method": "reflexion",
        "reflector": cfg.explore.reflector,
        "tasks": chains // cfg.eval.samples_per_task,
        "samples_per_task": cfg.eval.samples_per_task,
        "turn_budget_per_sample": budget,
        "max_steps": cfg.rollout.max_steps,
        "temperature": cfg.policy.temperature,
        "seed": cfg.seed,
        "success_rate": round(sum(s.solved for s in summaries) / chains, 4),
        "mean_attempts_per_sample": mean([s.nodes for s in summaries]),
        "mean_env_steps_per_sample": mean([s.env_steps for s in summaries]),
        "mean_model_tokens_per_sample": mean([s.model_tokens for s in summaries]),
        "mean_reflection_tokens_per_sample": mean([s.reflection_tokens for s in summaries]),
        "env_steps_per_task": round(sum(s.env_steps for s in summaries) * cfg.eval.samples_per_task / chains, 1),
        "model_tokens_per_task": round(sum(s.model_tokens for s in summaries) * cfg.eval.samples_per_task / chains, 1),
        "failed_reflections": sum(s.failed_reflections for s in summaries),
    }
