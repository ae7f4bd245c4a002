"""The experience tree of one task: every attempt, why it was made, and how it ended.

A node is one episode segment. A root (``parent_id is None``) starts at ``reset`` (a tree has
several when exploration restarts with budget left); a branch starts at a rollback point of
its parent: it takes over the parent's first ``prefix_length`` turns (the rollback step is
``prefix_length + 1``), is spawned by a reflection on the parent, and shows its experience
summaries in every prompt. A node's full history is its parent's
history up to the rollback point followed by its own ``steps``; :meth:`ExperienceTree.history`
rebuilds it and :meth:`ExperienceTree.trajectory` returns it as a :class:`Trajectory`.

The baselines use the same format: independent sampling is a tree of roots only; iterative
refinement is a chain (or, after a success, several) whose nodes start from ``reset``
(``prefix_length == 0``).

Trees are stored one per line in a JSONL file, appended as each task finishes, so an
interrupted exploration resumes at the next unexplored task (:func:`load_trees`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leafe.method.reflect import Reflection
from leafe.runs import read_jsonl
from leafe.types import Step, Task, Trajectory

OUTCOMES = ("success", "fail", "truncated", "out_of_budget", "invalid_replay")


@dataclass(frozen=True)
class TreeNode:
    """One attempt in a tree.

    Attributes:
        node_id: position in the tree (order of play: breadth-first within a root's subtree;
            the first root is 0).
        parent_id: the node whose history this one branches from (``None`` for a root).
        depth: 0 for a root, parent's depth + 1 otherwise.
        seed: the episode seed its turn seeds derive from.
        prefix_length: turns of the parent's history kept before this node's first own step.
        prefix_actions: the actions of those turns (what rollback replays).
        experience: the experience summaries shown in this node's prompts.
        spawned_by: the reflection on the parent that created this node (``None`` for a root).
        rollback: how the start state was rebuilt: ``"reset"``, ``"restore"`` or ``"replay"``.
        replay_mismatch: what differed when the rebuilt state was checked (then the node has no
            steps and its outcome is ``"invalid_replay"``), else ``None``.
        steps: this node's own turns.
        outcome: one of :data:`OUTCOMES`: ``success``; ``fail`` (the environment ended the
            episode); ``truncated`` (per-episode step limit); ``out_of_budget`` (the task's
            exploration budget ran out); ``invalid_replay``.
        reward: total reward of the full history.
        reflections: the reflections made on this node's history, in step order.
    """

    node_id: int
    parent_id: int | None
    depth: int
    seed: int
    prefix_length: int
    prefix_actions: tuple[str, ...]
    experience: tuple[str, ...]
    spawned_by: Reflection | None
    rollback: str
    replay_mismatch: str | None
    steps: tuple[Step, ...]
    outcome: str
    reward: float
    reflections: tuple[Reflection, ...] = ()

    @property
    def model_tokens(self) -> int:
        """Tokens of this node's turns and of the reflections on it."""
        turns = sum(step.prompt_tokens + step.completion_tokens for step in self.steps)
        return turns + sum(reflection.model_tokens for reflection in self.reflections)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spawned_by"] = None if self.spawned_by is None else self.spawned_by.to_dict()
        data["reflections"] = [reflection.to_dict() for reflection in self.reflections]
        data["steps"] = [step.to_dict() for step in self.steps]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TreeNode:
        spawned_by = data["spawned_by"]
        return cls(
            **{
                **data,
                "prefix_actions": tuple(data["prefix_actions"]),
                "experience": tuple(data["experience"]),
                "spawned_by": None if spawned_by is None else Reflection.from_dict(spawned_by),
                "steps": tuple(Step.from_dict(step) for step in data["steps"]),
                "reflections": tuple(Reflection.from_dict(r) for r in data.get("reflections", ())),
            }
        )


def node_history(nodes: Mapping[int, TreeNode] | Sequence[TreeNode], node_id: int) -> tuple[Step, ...]:
    """The full history of a node: its parent's history up to the rollback point, then its
    own steps. ``nodes`` maps ids to nodes (a tuple in id order does)."""
    node = nodes[node_id]
    if node.parent_id is None:
        return node.steps
    return node_history(nodes, node.parent_id)[: node.prefix_length] + node.steps


@dataclass(frozen=True)
class TreeSummary:
    """What one tree achieved and what it cost.

    ``successful_corrected_branches`` counts successful nodes created by a reflection;
    ``distinct_successful_trajectories`` counts distinct action sequences of successful full
    histories. ``env_steps`` are agent turns; ``rollback_env_steps`` the environment steps
    spent rebuilding states (not part of the budget). ``model_tokens`` includes reflections.
    """

    nodes: int
    solved: bool
    successful_nodes: int
    successful_corrected_branches: int
    distinct_successful_trajectories: int
    reflections: int
    failed_reflections: int
    env_steps: int
    model_tokens: int
    reflection_tokens: int
    replay_mismatches: int
    rollback_env_steps: int
    unexplored_branches: int
    max_depth: int
    outcomes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperienceTree:
    """All attempts at one task by one exploration method.

    Attributes:
        task: the task.
        method: ``"leafe"``, ``"independent"`` or ``"refinement"``.
        reflector: the reflector's name (``None`` for independent sampling).
        seed: the run seed.
        instruction: the task statement.
        initial_observation: the observation ``reset`` returned.
        nodes: in ``node_id`` order.
        max_env_steps: the task's turn budget.
        max_model_tokens: the task's token budget (``None``: unlimited).
        rollback_env_steps: environment steps spent rebuilding states for branches.
        unexplored_branches: branches planned but never started because the budget ran out.
    """

    task: Task
    method: str
    reflector: str | None
    seed: int
    instruction: str
    initial_observation: str
    nodes: tuple[TreeNode, ...]
    max_env_steps: int
    max_model_tokens: int | None
    rollback_env_steps: int = 0
    unexplored_branches: int = 0

    def __post_init__(self) -> None:
        if [node.node_id for node in self.nodes] != list(range(len(self.nodes))):
            raise ValueError(f"{self.task.task_id}: tree nodes must be numbered 0..n-1 in order")

    def history(self, node_id: int) -> tuple[Step, ...]:
        """The full history of a node (see :func:`node_history`)."""
        return node_history(self.nodes, node_id)

    def trajectory(self, node_id: int) -> Trajectory:
        """A node's full history as a trajectory (``sample_index`` is the node id)."""
        node = self.nodes[node_id]
        return Trajectory(
            task=self.task,
            sample_index=node_id,
            seed=node.seed,
            instruction=self.instruction,
            initial_observation=self.initial_observation,
            steps=self.history(node_id),
            success=node.outcome == "success",
        )

    def summary(self) -> TreeSummary:
        """Counts over the tree (see :class:`TreeSummary`)."""
        successes = [node for node in self.nodes if node.outcome == "success"]
        reflections = [reflection for node in self.nodes for reflection in node.reflections]
        distinct = {tuple(self.trajectory(node.node_id).actions) for node in successes}
        return TreeSummary(
            nodes=len(self.nodes),
            solved=bool(successes),
            successful_nodes=len(successes),
            successful_corrected_branches=sum(node.spawned_by is not None for node in successes),
            distinct_successful_trajectories=len(distinct),
            reflections=len(reflections),
            failed_reflections=sum(reflection.failed for reflection in reflections),
            env_steps=sum(len(node.steps) for node in self.nodes),
            model_tokens=sum(node.model_tokens for node in self.nodes),
            reflection_tokens=sum(reflection.model_tokens for reflection in reflections),
            replay_mismatches=sum(node.outcome == "invalid_replay" for node in self.nodes),
            rollback_env_steps=self.rollback_env_steps,
            unexplored_branches=self.unexplored_branches,
            max_depth=max((node.depth for node in self.nodes), default=0),
            outcomes=dict(Counter(node.outcome for node in self.nodes)),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; ``summary`` is included for readers (viewers) and ignored when loading."""
        return {
            "task": self.task.to_dict(),
            "method": self.method,
            "reflector": self.reflector,
            "seed": self.seed,
            "instruction": self.instruction,
            "initial_observation": self.initial_observation,
            "nodes": [node.to_dict() for node in self.nodes],
            "max_env_steps": self.max_env_steps,
            "max_model_tokens": self.max_model_tokens,
            "rollback_env_steps": self.rollback_env_steps,
            "unexplored_branches": self.unexplored_branches,
            "summary": asdict(self.summary()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperienceTree:
        return cls(
            task=Task.from_dict(data["task"]),
            method=data["method"],
            reflector=data["reflector"],
            seed=int(data["seed"]),
            instruction=data["instruction"],
            initial_observation=data["initial_observation"],
            nodes=tuple(TreeNode.from_dict(node) for node in data["nodes"]),
            max_env_steps=int(data["max_env_steps"]),
            max_model_tokens=data["max_model_tokens"],
            rollback_env_steps=int(data.get("rollback_env_steps", 0)),
            unexplored_branches=int(data.get("unexplored_branches", 0)),
        )


def load_trees(path: Path) -> dict[str, ExperienceTree]:
    """The trees stored in a JSONL file, by task id (a later line for a task replaces an earlier one)."""
    return {tree.task.task_id: tree for tree in (ExperienceTree.from_dict(record) for record in read_jsonl(path))}


@dataclass(frozen=True)
class ExplorationSummary:
    """Totals over the trees of one method (the numbers of the equal-budget comparison).

    ``coverage`` is the fraction of tasks solved at least once; ``successes_per_1k_env_steps``
    counts distinct successful trajectories per 1,000 agent turns.
    """

    method: str
    reflector: str | None
    tasks: int
    solved_tasks: int
    coverage: float
    successful_corrected_branches: int
    distinct_successful_trajectories: int
    successes_per_1k_env_steps: float
    env_steps: int
    model_tokens: int
    reflection_tokens: int
    reflections: int
    failed_reflections: int
    replay_mismatches: int
    rollback_env_steps: int


def summarize(trees: Iterable[ExperienceTree]) -> ExplorationSummary:
    """Totals over ``trees`` (all of one method and reflector)."""
    trees = list(trees)
    summaries = [tree.summary() for tree in trees]
    total = (lambda name: sum(getattr(summary, name) for summary in summaries))
    env_steps = total("env_steps")
    return ExplorationSummary(
        method=trees[0].method if trees else "",
        reflector=trees[0].reflector if trees else None,
        tasks=len(trees),
        solved_tasks=total("solved"),
        coverage=total("solved") / len(trees) if trees else 0.0,
        successful_corrected_branches=total("successful_corrected_branches"),
        distinct_successful_trajectories=total("distinct_successful_trajectories"),
        successes_per_1k_env_steps=1000 * total("distinct_successful_trajectories") / env_steps if env_steps else 0.0,
        env_steps=env_steps,
        model_tokens=total("model_tokens"),
        reflection_tokens=total("reflection_tokens"),
        reflections=total("reflections"),
        failed_reflections=total("failed_reflections"),
        replay_mismatches=total("replay_mismatches"),
        rollback_env_steps=total("rollback_env_steps"),
    )
