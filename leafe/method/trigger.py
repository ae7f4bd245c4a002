"""When to reflect: pure functions of an episode's recorded steps.

Two schedules (``trigger``):

* ``"interval"`` (the paper): every ``reflect_every`` steps, and when the episode ends without
  success (failure or step budget used up);
* ``"feedback"`` (ours): after every step whose feedback signals trouble, and when the episode
  ends without success.

Trouble signals, checked in this order on step ``t`` (1-based):

* ``parse_error``: the reply had no parseable action (``info["parse_error"]``);
* ``invalid_action``: the environment rejected the action (``info["invalid_action"]``);
* ``deadlock``: ``info["deadlock"]`` became true at this step (the task became unsolvable);
* ``no_change``: the state text is the same as before the step;
* ``repeated_state``: the state text equals one seen earlier in the episode (a loop);
* ``error_text``: the feedback line reads like an error ("invalid", "can't", "nothing changed").

Two observations show the *same state* when they are equal once a leading feedback line is
dropped from either (environments such as Sokoban put one line of feedback above the state,
but ``reset`` returns the state alone). A heuristic: an environment whose first line carries
state can raise a false ``no_change``/``repeated_state``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from leafe.types import Step

TRIGGERS = ("interval", "feedback")

_ERROR_TEXT = re.compile(
    r"\b(invalid|error|failed|cannot|can't|can not|unable|not allowed|not possible|no longer|unsolvable"
    r"|nothing (?:changed|happens|happened))\b",
    re.IGNORECASE,
)


def _readings(observation: str) -> set[str]:
    """The observation, and without its first line when it has more than one."""
    lines = observation.splitlines()
    return {observation, "\n".join(lines[1:])} if len(lines) > 1 else {observation}


def trouble(steps: Sequence[Step], t: int, initial_observation: str) -> str | None:
    """Why step ``t`` (1-based) of ``steps`` signals trouble, or ``None`` (see the module docstring)."""
    step = steps[t - 1]
    if step.info.get("parse_error"):
        return "parse_error"
    if step.info.get("invalid_action"):
        return "invalid_action"
    if step.info.get("deadlock") and not (t > 1 and steps[t - 2].info.get("deadlock")):
        return "deadlock"
    earlier = [initial_observation] + [s.observation for s in steps[: t - 1] if s.action is not None]
    current = _readings(step.observation)
    if current & _readings(earlier[-1]):
        return "no_change"
    if any(current & _readings(observation) for observation in earlier):
        return "repeated_state"
    first_line = step.observation.splitlines()[0] if step.observation else ""
    if _ERROR_TEXT.search(first_line):
        return "error_text"
    return None


def should_reflect(
    steps: Sequence[Step], t: int, trigger: str, reflect_every: int, initial_observation: str, ended: bool
) -> str | None:
    """Whether to reflect on the history ``steps[:t]``, and why.

    Args:
        steps: the episode's steps (at least ``t`` of them).
        t: the step just taken, 1-based.
        trigger: ``"interval"`` or ``"feedback"``.
        reflect_every: the interval K of the ``"interval"`` schedule.
        initial_observation: the observation ``reset`` returned (for the state comparisons).
        ended: the episode ended at step ``t`` without success.

    Returns:
        ``"end"``, ``"interval"``, a trouble signal name, or ``None`` (do not reflect).
    """
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}; expected one of {', '.join(TRIGGERS)}")
    if ended:
        return "end"
    if trigger == "interval":
        return "interval" if t % reflect_every == 0 else None
    return trouble(steps, t, initial_observation)


def reflection_points(
    steps: Sequence[Step],
    first: int,
    trigger: str,
    reflect_every: int,
    initial_observation: str,
    ended: bool,
    limit: int,
) -> list[tuple[int, str]]:
    """The last ``limit`` steps ``t`` in ``first..len(steps)`` to reflect at, with their reasons.

    ``ended``: the episode ended at its last step without success. The last points are kept
    because a later reflection sees more of the episode (and the final one is the paper's).
    """
    points = []
    for t in range(first, len(steps) + 1):
        reason = should_reflect(steps, t, trigger, reflect_every, initial_observation, ended and t == len(steps))
        if reason is not None:
            points.append((t, reason))
    return points[-limit:] if limit > 0 else []
