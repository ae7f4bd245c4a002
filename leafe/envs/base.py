"""The environment contract: text in, text out, Gymnasium-shaped.

An environment is any object with ``reset(task)`` and ``step(action_text)``; everything else
is optional and discovered with :func:`supports_snapshot` / :func:`expert_actions` /
``getattr(env, "diagnose", None)``:

* ``snapshot()`` / ``restore(snapshot)``: copy and restore the full state (fast rollback);
* ``expert_actions(task) -> list[str]``: a demonstration that solves ``task``;
* ``diagnose(task, actions) -> Diagnosis | None``: the environment's own verdict on an episode
  (which turn was the mistake and what to do instead), used by the ``env`` reflector;
* ``action_format``: ``"line"`` (default: an action is one line, e.g. ``left``) or ``"code"``
  (an action is a whole program, written in a fenced code block; see :func:`code_block`).

    obs, info = env.reset(task)            # info["instruction"]: the task statement
    obs, reward, terminated, truncated, info = env.step("left")
                                           # info["success"]: bool, the task was solved

Rollback (LEAFE stage 1) needs to rebuild the state reached after an action prefix. Environments
that can copy their state implement ``snapshot() -> object`` and ``restore(snapshot)``; for the
rest :func:`replay` rebuilds it by ``reset(task)`` + replaying the prefix, which is exact for
deterministic environments (``check_env`` verifies that).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from leafe.types import Task

StepResult = tuple[str, float, bool, bool, dict[str, Any]]


class EnvUnreachable(ConnectionError):
    """An environment served by another process (e.g. WebShop's web server) did not answer; the
    message names the setting (``env.base_url``). Finished episodes are on disk: rerun to resume."""


@runtime_checkable
class TextEnv(Protocol):
    """What every environment implements."""

    def reset(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Start ``task``. Returns (observation, info); ``info["instruction"]`` states the goal."""
        ...

    def step(self, action: str) -> StepResult:
        """Apply one action. Returns (observation, reward, terminated, truncated, info).

        An invalid action is not an error: the observation says why it was invalid and the
        state does not change.
        """
        ...


@runtime_checkable
class SnapshotEnv(TextEnv, Protocol):
    """An environment that can copy and restore its full state (the fast rollback path)."""

    def snapshot(self) -> Any:
        """An opaque copy of the current state (independent of later steps)."""
        ...

    def restore(self, snapshot: Any) -> None:
        """Return to the state captured by ``snapshot`` (restorable any number of times)."""
        ...


class TaskSource(Protocol):
    """Where tasks come from. Train and test splits never share a task."""

    def tasks(self, split: str, count: int | None = None) -> list[Task]:
        """The first ``count`` tasks (all when ``None``) of ``split`` in a fixed order."""
        ...


@dataclass(frozen=True)
class ReplayResult:
    """State rebuilt by :func:`replay`: the observation after the last replayed action."""

    observation: str
    info: dict[str, Any]
    terminated: bool


@dataclass(frozen=True)
class Diagnosis:
    """An environment's verdict on an episode.

    Attributes:
        rollback_step: the 1-based turn whose action was the mistake (turns without a parseable
            action count).
        summary: what went wrong and what to do instead, in a sentence or two.
    """

    rollback_step: int
    summary: str


ACTION_FORMATS = ("line", "code")
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL | re.IGNORECASE)


def action_format(env: object) -> str:
    """``"line"`` or ``"code"``: how the environment's actions are written."""
    value = getattr(env, "action_format", "line")
    if value not in ACTION_FORMATS:
        raise ValueError(f"{type(env).__name__}.action_format must be one of {ACTION_FORMATS}, got {value!r}")
    return value


def code_block(text: str) -> str | None:
    """The content of the first fenced code block in ``text`` (```` ```python ````, ```` ``` ````),
    or ``None``. A block cut off before its closing fence runs to the end of ``text``."""
    match = _FENCE.search(text)
    return match.group(1) if match else None


def supports_snapshot(env: object) -> bool:
    """True when ``env`` implements ``snapshot``/``restore``."""
    return callable(getattr(env, "snapshot", None)) and callable(getattr(env, "restore", None))


def expert_actions(env: object, task: Task) -> list[str] | None:
    """An expert demonstration for ``task`` if the environment provides one, else ``None``.

    An empty demonstration counts as none (e.g. a coding problem without a reference solution).
    """
    provider = getattr(env, "expert_actions", None)
    return (list(provider(task)) or None) if callable(provider) else None


def replay(env: TextEnv, task: Task, actions: Sequence[str]) -> ReplayResult:
    """Rebuild the state after ``actions`` by reset + deterministic replay (generic rollback).

    Stops early (and says so via ``terminated``) if the environment ends before the prefix does.
    """
    observation, info = env.reset(task)
    terminated = False
    for action in actions:
        observation, _reward, terminated, _truncated, info = env.step(action)
        if terminated:
            break
    return ReplayResult(observation=observation, info=info, terminated=terminated)
