"""Rollback: put an environment back into the state after a recorded history prefix, and check it.

Two ways, as in the paper:

* ``replay``: ``reset`` and step every recorded action again (exact for deterministic
  environments; ``check_env`` tests that);
* ``restore`` (fast path, environments with ``snapshot``/``restore``): restore the snapshot
  taken before the prefix's last action, then step that one action again.

Either way the observations of the actions stepped again, and of ``reset``, are compared with
the recorded ones; the first difference is returned as a mismatch, and a branch started from a
mismatched state is flagged ``invalid_replay`` by the caller. (Restoring alone returns no
observation to compare, which is why the last action is stepped again rather than restored.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from leafe.envs.base import TextEnv
from leafe.types import Step, Task

_SHOWN_CHARS = 120  # of each observation in a mismatch message


@dataclass(frozen=True)
class Rollback:
    """How the state was rebuilt.

    Attributes:
        method: ``"reset"`` (empty prefix), ``"restore"`` or ``"replay"``.
        instruction: the task statement ``reset`` returned.
        env_steps: environment steps taken to rebuild the state (not agent turns).
        mismatch: ``None`` when every compared observation matched, else what differed.
    """

    method: str
    instruction: str
    env_steps: int
    mismatch: str | None = None


def _differs(where: str, recorded: str, rebuilt: str) -> str:
    return f"{where}: recorded {recorded[:_SHOWN_CHARS]!r}, rebuilt {rebuilt[:_SHOWN_CHARS]!r}"


def roll_back(
    env: TextEnv,
    task: Task,
    initial_observation: str,
    prefix: Sequence[Step],
    snapshot_before_last: Any | None = None,
) -> Rollback:
    """Rebuild in ``env`` the state after ``prefix`` (recorded steps of ``task``) and verify it.

    Args:
        env: the environment to rebuild the state in (reset here).
        task: the task the prefix was recorded on.
        initial_observation: the recorded observation of ``reset``.
        prefix: the recorded steps to rebuild; steps without an action are skipped (they did not
            reach the environment).
        snapshot_before_last: the environment's snapshot of the state just before the prefix's
            last action; ``None`` replays the whole prefix.
    """
    observation, info = env.reset(task)
    instruction = str(info.get("instruction", ""))
    if observation != initial_observation:
        return Rollback("replay", instruction, 0, _differs("reset", initial_observation, observation))
    acted = [(number, step.action, step.observation) for number, step in enumerate(prefix, 1) if step.action is not None]
    if not acted:
        return Rollback("reset", instruction, 0)
    method = "replay"
    if snapshot_before_last is not None:
        env.restore(snapshot_before_last)  # type: ignore[attr-defined]
        acted, method = acted[-1:], "restore"
    for count, (number, action, recorded) in enumerate(acted, start=1):
        observation = env.step(action)[0]
        if observation != recorded:
            return Rollback(method, instruction, count, _differs(f"step {number} ({action!r})", recorded, observation))
    return Rollback(method, instruction, len(acted))
