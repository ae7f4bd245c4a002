"""LEAFE stage 1, reflective rollback exploration, and its two equal-budget baselines.

    agent = Agent(make_env, policy, prompter, sampling, max_steps=10)
    trees = run_method("leafe", tasks, agent, ExploreSettings(), seed=0, trees_file=path)

``explore`` (the paper's stage 1), per task:

1. play a root episode;
2. reflect on every failed node (episode failed or hit its step limit) at the steps chosen by
   the trigger (:mod:`leafe.method.trigger`); each reflection names a rollback step tau and an
   experience summary e;
3. for each distinct tau, plan ``max_branches_per_node`` branches: roll back to the state before
   step tau (restore or replay, verified: :mod:`leafe.method.rollback`) and let the policy play
   on with e added to its prompt;
4. repeat breadth-first, wave by wave, until no node is left to expand (nodes at ``max_depth``
   are not) or the task's budget (``max_env_steps`` turns, ``max_model_tokens``, reflections
   included) is used up;
5. with ``restart`` (default), a task whose tree is finished while budget remains starts a new
   root and explores it the same way, so every method spends the same budget.

Departures from the paper, and choices it leaves open:

* A reflection never interrupts an episode: the episode plays on, and the reflection (which sees
  only the steps up to its trigger point) plans branches for the next wave. So each episode is
  also a plain sample, and reflections can be made after the episode in one batch.
* Only failed nodes are reflected on; a successful node is never expanded.
* A branch shows the experience summaries of its ancestors too (the last
  ``experience_window`` of them), like Reflexion's memory.
* Budgets count agent turns (replies without an action included), not environment calls made
  to rebuild states, which are reported separately (``rollback_env_steps``).

Baselines, sharing the same budget accounting and tree format (Table 3 of the paper):

* ``independent_sampling``: fresh episodes until the budget is used (roots only);
* ``iterative_refinement``: retry from ``reset`` with the reflections on earlier attempts in the
  prompt (a chain) until an attempt succeeds; with ``restart``, a new chain then begins, until
  the budget is used.

All three play node 0 with the same seed, so their first attempts are identical.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from leafe.agent import Agent
from leafe.config import ExploreSettings
from leafe.method.reflect import Reflection, Reflector, build_reflector
from leafe.method.task_search import PlannedBranch, TaskSearch, play_wave, reflect_on
from leafe.method.tree import ExperienceTree, TreeNode, load_trees
from leafe.method.trigger import reflection_points
from leafe.policy.base import Policy
from leafe.rollout import Budget
from leafe.runs import append_jsonl
from leafe.types import Task

__all__ = [
    "METHODS",
    "Agent",
    "ExploreSettings",
    "explore",
    "independent_sampling",
    "iterative_refinement",
    "make_reflector",
    "run_method",
]

logger = logging.getLogger(__name__)

METHODS = ("leafe", "independent", "refinement")
_FAILED = ("fail", "truncated")


def make_reflector(settings: ExploreSettings, agent: Agent, reflector_policy: Policy | None = None) -> Reflector:
    """The reflector ``settings.reflector`` for ``agent`` (``"model"`` needs ``reflector_policy``)."""
    sampling = replace(agent.sampling, max_new_tokens=settings.reflection_max_new_tokens, stop=())
    return build_reflector(
        settings.reflector,
        agent.policy,
        agent.make_env,
        agent.prompter.prompt_format,
        sampling,
        settings.max_reflection_attempts,
        reflector_policy,
    )


OnTree = Callable[[ExperienceTree], None]
# Explores the given tasks (somewhere) and calls back with each finished tree.
Explorer = Callable[[Sequence[Task], OnTree], None]
_Plan = Callable[[list[tuple[TaskSearch, TreeNode]]], None]


def _search_waves(
    tasks: Sequence[Task],
    method: str,
    reflector: str | None,
    agent: Agent,
    settings: ExploreSettings,
    seed: int,
    plan: _Plan,
    on_tree: OnTree | None,
) -> list[ExperienceTree]:
    """Explore ``tasks`` in groups of ``max_tasks_in_flight``: each task starts with one root;
    after every wave ``plan`` plans the next branches; a task without plans is finished."""
    finished: dict[str, ExperienceTree] = {}
    for offset in range(0, len(tasks), settings.max_tasks_in_flight):
        active = [
            TaskSearch(task, method, reflector, seed, Budget(settings.max_env_steps, settings.max_model_tokens))
            for task in tasks[offset : offset + settings.max_tasks_in_flight]
        ]
        for search in active:
            search.planned = [PlannedBranch(parent_id=None)]
        while active:
            plan(play_wave(active, agent))
            for search in [s for s in active if not s.planned]:
                tree = finished[search.task.task_id] = search.tree()
                if on_tree is not None:
                    on_tree(tree)
            active = [search for search in active if search.planned]
    return [finished[task.task_id] for task in tasks]


def _restart_idle(new_nodes: list[tuple[TaskSearch, TreeNode]], settings: ExploreSettings) -> None:
    """With ``settings.restart``, plan a fresh root for each task that has nothing planned but budget left."""
    if not settings.restart:
        return
    for search in {id(search): search for search, _node in new_nodes}.values():
        if not search.planned and not search.budget.exhausted():
            search.planned = [PlannedBranch(parent_id=None)]


def _experience(node: TreeNode, reflection: Reflection | None, window: int) -> tuple[str, ...]:
    added = () if reflection is None or reflection.failed else (reflection.experience_summary,)
    return (node.experience + added)[-window:] if window else ()


def explore(
    tasks: Sequence[Task],
    agent: Agent,
    reflector: Reflector,
    settings: ExploreSettings,
    seed: int,
    on_tree: OnTree | None = None,
) -> list[ExperienceTree]:
    """LEAFE stage 1 on every task (module docstring); one tree per task, in task order.

    ``on_tree`` is called with each tree as soon as its task is finished.
    """

    def plan(new_nodes: list[tuple[TaskSearch, TreeNode]]) -> None:
        points = []
        for search, node in new_nodes:
            if node.outcome not in _FAILED or node.depth >= settings.max_depth or search.budget.exhausted():
                continue
            history = search.history(node.node_id)
            for at_step, trigger in reflection_points(
                history, node.prefix_length + 1, settings.trigger, settings.reflect_every,
                search.initial_observation, ended=True, limit=settings.max_reflections_per_node,
            ):
                points.append((search, node.node_id, at_step, trigger))
        # One branch point per distinct rollback step of a node; the latest reflection (it saw most) wins.
        points_by_step: dict[tuple[int, int, int], tuple[TaskSearch, int, int, Reflection]] = {}
        for search, node_id, reflection in reflect_on(points, reflector):
            if reflection.rollback_step is not None:
                key = (id(search), node_id, reflection.rollback_step)
                points_by_step[key] = (search, node_id, reflection.rollback_step, reflection)
        for search, node_id, rollback_step, reflection in sorted(
            points_by_step.values(), key=lambda item: (item[1], item[3].at_step)
        ):
            branch = PlannedBranch(
                parent_id=node_id,
                prefix_length=rollback_step - 1,
                experience=_experience(search.nodes[node_id], reflection, settings.experience_window),
                spawned_by=reflection,
            )
            search.planned.extend([branch] * settings.max_branches_per_node)
        _restart_idle(new_nodes, settings)

    return _search_waves(tasks, "leafe", reflector.name, agent, settings, seed, plan, on_tree)


def independent_sampling(
    tasks: Sequence[Task], agent: Agent, settings: ExploreSettings, seed: int, on_tree: OnTree | None = None
) -> list[ExperienceTree]:
    """Best-of-n: fresh episodes until each task's budget is used; a tree of roots per task."""

    def plan(new_nodes: list[tuple[TaskSearch, TreeNode]]) -> None:
        for search in {id(search): search for search, _node in new_nodes}.values():
            turns_left = search.budget.turns_left()
            if turns_left:
                search.planned = [PlannedBranch(parent_id=None)] * math.ceil(turns_left / agent.max_steps)

    return _search_waves(tasks, "independent", None, agent, settings, seed, plan, on_tree)


def iterative_refinement(
    tasks: Sequence[Task],
    agent: Agent,
    reflector: Reflector,
    settings: ExploreSettings,
    seed: int,
    on_tree: OnTree | None = None,
) -> list[ExperienceTree]:
    """Retry from ``reset`` with the reflections on earlier attempts in the prompt (a chain),
    until an attempt succeeds (then, with ``restart``, a new chain begins) or the budget is
    used. Each failed attempt gets one reflection on its whole history (trigger ``end``); its
    rollback step is recorded but unused."""

    def plan(new_nodes: list[tuple[TaskSearch, TreeNode]]) -> None:
        retry = [(search, node) for search, node in new_nodes if node.outcome in _FAILED and not search.budget.exhausted()]
        points = [(search, node.node_id, len(search.history(node.node_id)), "end") for search, node in retry]
        made = {id(search): reflection for search, _node_id, reflection in reflect_on(points, reflector)}
        for search, node in retry:
            if search.budget.exhausted():
                continue
            reflection = made.get(id(search))
            spawned_by = None if reflection is None or reflection.failed else reflection
            search.planned = [
                PlannedBranch(node.node_id, 0, _experience(node, spawned_by, settings.experience_window), spawned_by)
            ]
        _restart_idle(new_nodes, settings)

    return _search_waves(tasks, "refinement", reflector.name, agent, settings, seed, plan, on_tree)


def run_method(
    method: str,
    tasks: Sequence[Task],
    agent: Agent,
    settings: ExploreSettings,
    seed: int,
    trees_file: Path,
    reflector: Reflector | None = None,
    on_tree: OnTree | None = None,
    explorer: Explorer | None = None,
) -> list[ExperienceTree]:
    """Run ``method`` on the tasks not yet in ``trees_file``, appending each tree as it finishes.

    This is what ``leafe explore`` calls: a killed run loses only the tasks in flight, and a
    rerun explores only the missing ones. Returns every task's tree, in task order.

    Args:
        method: ``"leafe"``, ``"independent"`` or ``"refinement"``.
        reflector: defaults to :func:`make_reflector` of ``settings`` (not used by
            ``independent``).
        on_tree: called with each newly explored tree once it is saved (e.g. a progress bar).
        explorer: explores the missing tasks elsewhere (e.g. on Ray workers,
            :func:`leafe.workers.explore_on_workers`), calling back with each tree; default: here,
            with :func:`explore_tasks`.

    Raises:
        ValueError: unknown method, or ``trees_file`` holds trees of another method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown exploration method {method!r}; expected one of {', '.join(METHODS)}")
    done = load_trees(trees_file)
    other = sorted({tree.method for tree in done.values()} - {method})
    if other:
        raise ValueError(f"{trees_file} holds trees of method {other[0]!r}, not {method!r}; use another file")
    todo = [task for task in tasks if task.task_id not in done]
    logger.info("explore %s: %d tasks, %d already explored, %d to explore", method, len(tasks), len(tasks) - len(todo), len(todo))
    trees_file.parent.mkdir(parents=True, exist_ok=True)

    def save(tree: ExperienceTree) -> None:
        append_jsonl(trees_file, tree.to_dict())
        summary = tree.summary()
        logger.info(
            "%s: %d nodes, solved=%s, %d env steps, %d model tokens",
            tree.task.task_id, summary.nodes, summary.solved, summary.env_steps, summary.model_tokens,
        )
        if on_tree is not None:
            on_tree(tree)

    if todo and explorer is not None:
        explorer(todo, save)
    elif todo:
        explore_tasks(method, todo, agent, settings, seed, reflector, save)
    done = load_trees(trees_file)
    return [done[task.task_id] for task in tasks]


def explore_tasks(
    method: str,
    tasks: Sequence[Task],
    agent: Agent,
    settings: ExploreSettings,
    seed: int,
    reflector: Reflector | None = None,
    on_tree: OnTree | None = None,
) -> list[ExperienceTree]:
    """Explore ``tasks`` with ``method`` in this process, handing each tree to ``on_tree`` as it
    finishes (no files: :func:`run_method` saves them). ``reflector`` defaults to
    :func:`make_reflector` of ``settings`` (not used by ``independent``)."""
    if method == "independent":
        return independent_sampling(tasks, agent, settings, seed, on_tree)
    chosen = reflector if reflector is not None else make_reflector(settings, agent)
    run = explore if method == "leafe" else iterative_refinement
    return run(tasks, agent, chosen, settings, seed, on_tree)
