"""The objects that cross layers: tasks, steps and trajectories.

Everything here is a plain frozen dataclass that round-trips through JSON
(``to_dict`` / ``from_dict``), so a trajectory written by one command can be read
by any later one (evaluation, exploration, SFT data building, the viewer).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Task:
    """One environment instance to solve.

    Attributes:
        task_id: unique within an environment, stable across runs (e.g. ``"sokoban/test/0007"``).
        split: ``"train"`` or ``"test"``; the two splits of one task source never share a task.
        params: environment-specific, JSON-serialisable parameters that fully determine the
            instance (for Sokoban: the generation seed and room settings).
    """

    task_id: str
    split: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        return cls(task_id=data["task_id"], split=data["split"], params=dict(data.get("params", {})))


@dataclass(frozen=True)
class Step:
    """One agent turn: the model saw ``prompt``, wrote ``completion``, and the environment answered.

    Attributes:
        prompt: the exact text (or rendered chat) the model was conditioned on.
        completion: the model's raw output, stop sequence removed.
        action: the parsed action, or ``None`` when the completion had no parseable action
            (then the environment was not stepped and ``observation`` is the format feedback).
        observation: what the agent sees next (environment observation and/or feedback).
        reward: reward returned by the environment for this step (0.0 when not stepped).
        terminated: the environment reached a terminal state (success or dead end).
        truncated: the episode was cut by the interaction budget at this step.
        prompt_tokens: tokens in ``prompt``.
        completion_tokens: tokens generated for ``completion``.
        info: environment info for this step (JSON-serialisable).
    """

    prompt: str
    completion: str
    action: str | None
    observation: str
    reward: float
    terminated: bool
    truncated: bool
    prompt_tokens: int
    completion_tokens: int
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(**data)


@dataclass(frozen=True)
class Trajectory:
    """One episode of one task.

    Attributes:
        task: the task that was played.
        sample_index: which of the n independent samples of this task this is (0-based).
        seed: the sampling seed the episode used (derived from the run seed, task and sample).
        instruction: the task statement shown to the agent.
        initial_observation: observation returned by ``reset``.
        steps: the turns, in order.
        success: the environment reported success (``info["success"]``) at the last step.
    """

    task: Task
    sample_index: int
    seed: int
    instruction: str
    initial_observation: str
    steps: tuple[Step, ...]
    success: bool

    @property
    def total_reward(self) -> float:
        return float(sum(step.reward for step in self.steps))

    @property
    def actions(self) -> list[str]:
        """The actions that reached the environment, in order (unparseable turns skipped)."""
        return [step.action for step in self.steps if step.action is not None]

    @property
    def prompt_tokens(self) -> int:
        return sum(step.prompt_tokens for step in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(step.completion_tokens for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.to_dict(),
            "sample_index": self.sample_index,
            "seed": self.seed,
            "instruction": self.instruction,
            "initial_observation": self.initial_observation,
            "steps": [step.to_dict() for step in self.steps],
            "success": self.success,
            "total_reward": self.total_reward,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        return cls(
            task=Task.from_dict(data["task"]),
            sample_index=int(data["sample_index"]),
            seed=int(data["seed"]),
            instruction=data["instruction"],
            initial_observation=data["initial_observation"],
            steps=tuple(Step.from_dict(s) for s in data["steps"]),
            success=bool(data["success"]),
        )


# Every kind of SFT example: LEAFE's corrections and rehearsals, and Early Experience's targets.
SFT_KINDS = ("counterfactual", "rehearsal", "world_model", "imitation", "reflection")


@dataclass(frozen=True)
class SFTExample:
    """One supervised target turn for LEAFE stage 2 (distillation).

    Attributes:
        kind: ``"counterfactual"`` (a corrected action at a rollback point, trained by L_cf) or
            ``"rehearsal"`` (a turn of a successful rollout, trained by L_reh); the Early
            Experience baseline adds ``"world_model"``, ``"imitation"`` and ``"reflection"``
            (trained like rehearsal; :mod:`leafe.method.early_experience`).
        prompt: exactly what the policy sees at that turn at test time: the prompt rebuilt from
            the history WITHOUT experience summaries (a string for the completion format, a list
            of chat messages for the chat format).
        completion: the target reply, the only text the loss is computed on (completion format:
            the continuation after the prompt's trailing ``"Thought:"``, ending in the stop string).
        task_id: the task the example comes from.
        node_id: the tree node whose history holds the target turn.
        turn: 0-based index of the target turn in that node's full history.
    """

    kind: str
    prompt: str | list[dict[str, str]]
    completion: str
    task_id: str
    node_id: int
    turn: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFTExample:
        """Reads :meth:`to_dict` output and exported records (whose chat ``completion`` is a
        one-message list).

        Raises:
            ValueError: a field is missing or of the wrong type, or ``kind`` is unknown (the
                message names the field).
        """
        missing = [key for key in ("kind", "prompt", "completion", "task_id", "node_id", "turn") if key not in data]
        if missing:
            raise ValueError(f"missing field {', '.join(missing)}")
        if data["kind"] not in SFT_KINDS:
            raise ValueError(f"kind {data['kind']!r}: expected one of {', '.join(SFT_KINDS)}")
        completion = data["completion"]
        if isinstance(completion, list) and completion and _is_message(completion[-1]):
            completion = completion[-1]["content"]
        prompt = data["prompt"]
        if not isinstance(completion, str):
            raise ValueError("completion: expected text (or a list of chat messages)")
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_message(m) for m in prompt))):
            raise ValueError("prompt: expected text or a list of chat messages ({'role': ..., 'content': ...})")
        if not isinstance(data["task_id"], str):
            raise ValueError("task_id: expected text")
        for key in ("node_id", "turn"):
            if isinstance(data[key], bool) or not isinstance(data[key], int):
                raise ValueError(f"{key}: expected an integer")
        return cls(data["kind"], prompt, completion, data["task_id"], data["node_id"], data["turn"])


def _is_message(item: Any) -> bool:
    """Whether ``item`` is a chat message: ``{"role": str, "content": str}``."""
    return isinstance(item, dict) and isinstance(item.get("role"), str) and isinstance(item.get("content"), str)
