"""``check_env``: does an environment honour the contract rollback depends on?

For each task it checks that
* ``reset`` is deterministic (two fresh environments, and one environment reset twice);
* ``step`` returns the right types, a JSON-serialisable info, and tolerates an invalid action;
* the same action sequence gives identical observations, rewards and flags twice;
* reset + replay of any action prefix reaches the recorded observation (generic rollback);
* ``snapshot``/``restore``, where implemented, reproduce the continuation, even when restored twice;
* the expert demonstration, where provided, solves the task.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from leafe.envs.base import StepResult, TextEnv, expert_actions, replay, supports_snapshot
from leafe.types import Task

INVALID_ACTION = "xyzzy-not-an-action"


class EnvCheckError(AssertionError):
    """The environment breaks the contract; the message says which task and which check."""


@dataclass(frozen=True)
class EnvCheckReport:
    """What was checked."""

    tasks_checked: int
    steps_checked: int
    snapshot_checked: bool
    experts_checked: int


def _fail(task: Task, check: str, detail: str) -> EnvCheckError:
    return EnvCheckError(f"{task.task_id}: {check}: {detail}")


def _check_step_types(task: Task, result: StepResult) -> None:
    if not (isinstance(result, tuple) and len(result) == 5):
        raise _fail(task, "step", "must return (observation, reward, terminated, truncated, info)")
    observation, reward, terminated, truncated, info = result
    if not isinstance(observation, str):
        raise _fail(task, "step", f"observation must be str, got {type(observation).__name__}")
    if not isinstance(reward, (int, float)) or not isinstance(terminated, bool) or not isinstance(truncated, bool):
        raise _fail(task, "step", "reward must be a number and terminated/truncated plain bools")
    if not isinstance(info, dict):
        raise _fail(task, "step", "info must be a dict")
    try:
        json.dumps(info)
    except TypeError as exc:
        raise _fail(task, "step", f"info is not JSON-serialisable ({exc})") from None


def _play(env: TextEnv, actions: Sequence[str]) -> list[StepResult]:
    results = []
    for action in actions:
        results.append(env.step(action))
        if results[-1][2] or results[-1][3]:
            break
    return results


def _action_plan(env: TextEnv, task: Task, rng: random.Random, length: int) -> list[str]:
    """A mix of expert and random actions with one invalid action in it."""
    vocabulary = list(getattr(env, "action_words", ()) or (expert_actions(env, task) or []))
    plan = [rng.choice(vocabulary) for _ in range(length)] if vocabulary else []
    plan.insert(min(1, len(plan)), INVALID_ACTION)
    return plan


def check_env(
    make_env: Callable[[], TextEnv], tasks: Sequence[Task], seed: int = 0, plan_length: int = 12
) -> EnvCheckReport:
    """Run every check on every task; raise :class:`EnvCheckError` at the first failure."""
    rng = random.Random(seed)
    steps_checked = experts_checked = 0
    snapshot_checked = False
    for task in tasks:
        env_a, env_b = make_env(), make_env()
        first = env_a.reset(task)
        if not isinstance(first[0], str) or not isinstance(first[1], dict):
            raise _fail(task, "reset", "must return (observation: str, info: dict)")
        if env_b.reset(task) != first or env_a.reset(task) != first:
            raise _fail(task, "reset", "two resets of the same task differ")

        plan = _action_plan(env_a, task, rng, plan_length)
        run_a = _play(env_a, plan)
        run_b = _play(env_b, plan)
        for result in run_a:
            _check_step_types(task, result)
        if run_a != run_b:
            index = next((i for i, (a, b) in enumerate(zip(run_a, run_b)) if a != b), min(len(run_a), len(run_b)))
            raise _fail(task, "determinism", f"same actions gave different results at step {index + 1}")
        steps_checked += len(run_a)

        played = plan[: len(run_a)]
        for prefix in sorted({0, len(played) // 2, len(played)}):
            rebuilt = replay(make_env(), task, played[:prefix])
            expected = first[0] if prefix == 0 else run_a[prefix - 1][0]
            if rebuilt.observation != expected:
                raise _fail(task, "replay", f"reset + replay of {prefix} actions reached a different observation")

        if supports_snapshot(env_a):
            snapshot_checked = True
            split = len(played) // 2
            env_a.reset(task)
            _play(env_a, played[:split])
            snapshot = env_a.snapshot()
            continuation = _play(env_a, played[split:])
            for attempt in ("first", "second"):
                env_a.restore(snapshot)
                if _play(env_a, played[split:]) != continuation:
                    raise _fail(task, "snapshot", f"{attempt} restore did not reproduce the continuation")

        demo = expert_actions(env_a, task)
        if demo is not None:
            env_a.reset(task)
            results = _play(env_a, demo)
            if not results or not results[-1][4].get("success", False):
                raise _fail(task, "expert", "the expert demonstration does not solve the task")
            experts_checked += 1
    return EnvCheckReport(
        tasks_checked=len(tasks),
        steps_checked=steps_checked,
        snapshot_checked=snapshot_checked,
        experts_checked=experts_checked,
    )
