"""The machinery the exploration methods share: per-task state, batched waves, batched reflection.

Every method (:mod:`leafe.method.explore`) proceeds in *waves*. In a wave, each task still being
explored plays the branches it has planned; all of them, across tasks, go through one call of
:func:`leafe.rollout.run_episodes`, so the policy sees large batches. After the wave, the method
reflects on the new nodes (one batched reflector call) and plans the next wave.

Each task has its own :class:`~leafe.rollout.Budget`; its episodes of a wave are all in flight
together and are granted turns in plan order, so what happens to a task does not depend on
which other tasks shared its waves (a resumed run explores a task exactly as an uninterrupted
one would).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from leafe.agent import Agent
from leafe.envs.base import TextEnv, supports_snapshot
from leafe.method.reflect import Reflection, ReflectionQuery, Reflector
from leafe.method.rollback import Rollback, roll_back
from leafe.method.tree import ExperienceTree, TreeNode, node_history
from leafe.policy.base import Policy, SamplingParams
from leafe.prompting import Prompter
from leafe.rollout import Budget, EpisodeJob, EpisodeStart, derive_seed, run_episodes
from leafe.types import Step, Task, Trajectory


@dataclass(frozen=True)
class PlannedBranch:
    """A node to play in the next wave.

    Attributes:
        parent_id: the node it branches from (``None``: a new root).
        prefix_length: turns of the parent's history it starts after (0: from ``reset``).
        experience: experience summaries shown in its prompts.
        spawned_by: the reflection that planned it.
    """

    parent_id: int | None
    prefix_length: int = 0
    experience: tuple[str, ...] = ()
    spawned_by: Reflection | None = None


class TaskSearch:
    """The mutable state of one task while a method explores it.

    Attributes:
        budget: the task's ledger; every turn and every reflection token is charged to it.
        nodes: finished nodes by id.
        planned: branches to play in the next wave.
    """

    def __init__(self, task: Task, method: str, reflector: str | None, seed: int, budget: Budget) -> None:
        self.task, self.method, self.reflector, self.seed = task, method, reflector, seed
        self.budget = budget
        self.nodes: dict[int, TreeNode] = {}
        self.planned: list[PlannedBranch] = []
        self.instruction = ""
        self.initial_observation = ""
        self.rollback_env_steps = 0
        self.unexplored_branches = 0
        self._snapshots: dict[int, list[Any]] = {}  # node id -> state after each of its own turns

    def tree(self) -> ExperienceTree:
        """The tree of the nodes finished so far."""
        if self.budget.max_env_steps is None:
            raise ValueError("a task budget needs max_env_steps")
        return ExperienceTree(
            task=self.task,
            method=self.method,
            reflector=self.reflector,
            seed=self.seed,
            instruction=self.instruction,
            initial_observation=self.initial_observation,
            nodes=tuple(self.nodes[node_id] for node_id in sorted(self.nodes)),
            max_env_steps=self.budget.max_env_steps,
            max_model_tokens=self.budget.max_model_tokens,
            rollback_env_steps=self.rollback_env_steps,
            unexplored_branches=self.unexplored_branches,
        )

    def history(self, node_id: int) -> tuple[Step, ...]:
        """The full history of a finished node."""
        return node_history(self.nodes, node_id)

    def add_reflection(self, node_id: int, reflection: Reflection) -> None:
        """Record a reflection on a node and charge its tokens to the budget."""
        self.budget.charge(model_tokens=reflection.model_tokens)
        node = self.nodes[node_id]
        self.nodes[node_id] = replace(node, reflections=node.reflections + (reflection,))

    def _snapshot_after(self, node_id: int, turns: int) -> Any | None:
        """The snapshot of the state after ``turns`` turns of a node's history, if one was taken."""
        node = self.nodes[node_id]
        if turns == 0:
            return None
        if turns <= node.prefix_length:
            return None if node.parent_id is None else self._snapshot_after(node.parent_id, turns)
        own = self._snapshots.get(node_id, [])
        index = turns - node.prefix_length - 1
        return own[index] if index < len(own) else None

    def prepare(self, branch: PlannedBranch, make_env: Callable[[], TextEnv]) -> tuple[Rollback, EpisodeStart | None]:
        """Rebuild a branch point. Returns how, and the episode start (``None``: start from
        ``reset``, or the rebuilt state did not match the record: see ``Rollback.mismatch``)."""
        if branch.parent_id is None or branch.prefix_length == 0:
            return Rollback("reset", self.instruction, 0), None
        prefix = self.history(branch.parent_id)[: branch.prefix_length]
        acted = [turn for turn, step in enumerate(prefix) if step.action is not None]
        snapshot = self._snapshot_after(branch.parent_id, acted[-1]) if acted else None
        env = make_env()
        rollback = roll_back(env, self.task, self.initial_observation, prefix, snapshot)
        self.rollback_env_steps += rollback.env_steps
        if rollback.mismatch is not None:
            return rollback, None
        return rollback, EpisodeStart(env, rollback.instruction, self.initial_observation, prefix)

    def record_snapshot(self, node_id: int, env: TextEnv) -> None:
        """Keep the state after the node's latest turn (for rollback by ``restore``)."""
        if supports_snapshot(env):
            self._snapshots.setdefault(node_id, []).append(env.snapshot())  # type: ignore[attr-defined]

    def add_node(
        self, node_id: int, branch: PlannedBranch, rollback: Rollback, steps: tuple[Step, ...], outcome: str, reward: float
    ) -> TreeNode:
        """Record a finished node."""
        parent = None if branch.parent_id is None else self.nodes[branch.parent_id]
        prefix = () if parent is None else self.history(parent.node_id)[: branch.prefix_length]
        node = TreeNode(
            node_id=node_id,
            parent_id=branch.parent_id,
            depth=0 if parent is None else parent.depth + 1,
            seed=derive_seed(self.seed, self.task.task_id, node_id),
            prefix_length=branch.prefix_length,
            prefix_actions=tuple(step.action for step in prefix if step.action is not None),
            experience=branch.experience,
            spawned_by=branch.spawned_by,
            rollback=rollback.method,
            replay_mismatch=rollback.mismatch,
            steps=steps,
            outcome=outcome,
            reward=reward,
        )
        self.nodes[node_id] = node
        return node


def _outcome(trajectory: Trajectory, own: tuple[Step, ...]) -> str:
    if trajectory.success:
        return "success"
    if not own or own[-1].info.get("budget_exhausted"):
        return "out_of_budget"
    return "fail" if own[-1].terminated else "truncated"


def play_wave(searches: Sequence[TaskSearch], agent: Agent) -> list[tuple[TaskSearch, TreeNode]]:
    """Play every planned branch of every search in one batched rollout.

    A task plays at most as many branches as it has turns left (the rest are counted as
    unexplored). Returns the new nodes, per search in id (breadth-first) order.
    """
    jobs: list[EpisodeJob] = []
    playing: dict[tuple[str, int], tuple[TaskSearch, PlannedBranch, Rollback]] = {}
    new: list[tuple[TaskSearch, int]] = []
    for search in searches:
        runnable = search.planned[: int(min(len(search.planned), search.budget.turns_left()))]
        search.unexplored_branches += len(search.planned) - len(runnable)
        search.planned = []
        first_id = len(search.nodes)
        for node_id, branch in enumerate(runnable, start=first_id):
            new.append((search, node_id))
            rollback, start = search.prepare(branch, agent.make_env)
            if rollback.mismatch is not None:
                search.add_node(node_id, branch, rollback, (), "invalid_replay", 0.0)
                continue
            seed = derive_seed(search.seed, search.task.task_id, node_id)
            jobs.append(EpisodeJob(search.task, node_id, seed, branch.experience, start, search.budget))
            playing[(search.task.task_id, node_id)] = (search, branch, rollback)

    def snapshot(job: EpisodeJob, env: TextEnv) -> None:
        playing[(job.task.task_id, job.sample_index)][0].record_snapshot(job.sample_index, env)

    trajectories = run_episodes(
        jobs, agent.make_env, agent.policy, agent.prompter, agent.sampling, agent.max_steps,
        max_concurrent=max(1, len(jobs)), on_step=snapshot,
    )
    for trajectory in trajectories:
        search, branch, rollback = playing[(trajectory.task.task_id, trajectory.sample_index)]
        if not search.initial_observation:
            search.instruction, search.initial_observation = trajectory.instruction, trajectory.initial_observation
        own = trajectory.steps[branch.prefix_length :]
        search.add_node(trajectory.sample_index, branch, rollback, own, _outcome(trajectory, own), trajectory.total_reward)
    return [(search, search.nodes[node_id]) for search, node_id in new]


def reflect_on(
    points: Sequence[tuple[TaskSearch, int, int, str]], reflector: Reflector
) -> list[tuple[TaskSearch, int, Reflection]]:
    """Reflect, in one batched call, on history prefixes ``(search, node_id, at_step, trigger)``.

    Each reflection is recorded on its node and charged to its task's budget. Returns the
    reflections made (failed ones included; points where the reflector found nothing are left out).
    """
    queries = []
    for search, node_id, at_step, _trigger in points:
        node = search.nodes[node_id]
        queries.append(
            ReflectionQuery(
                task=search.task,
                instruction=search.instruction,
                initial_observation=search.initial_observation,
                steps=search.history(node_id)[:at_step],
                seed=derive_seed(node.seed, "reflect", at_step),
            )
        )
    made = []
    for (search, node_id, _at_step, trigger), reflection in zip(points, reflector.reflect(queries) if queries else []):
        if reflection is not None:
            reflection = replace(reflection, trigger=trigger)
            search.add_reflection(node_id, reflection)
            made.append((search, node_id, reflection))
    return made
