"""Shortest plans from any household state and the env reflector's diagnosis, on real games."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("textworld")

from leafe.envs.household import HouseholdEnv  # noqa: E402
from leafe.envs.household_diagnosis import plan_from  # noqa: E402
from leafe.envs.household_scenes import HouseholdTasks, spec_for  # noqa: E402


@pytest.fixture(scope="module")
def tasks():
    source = HouseholdTasks()
    return source.tasks("train", 10) + source.tasks("test", 5)


def test_plan_from_the_start_is_the_walkthrough(tasks):
    env = HouseholdEnv()
    for task in tasks:
        env.reset(task)
        assert plan_from(spec_for(task), env.facts()) == spec_for(task).walkthrough()


@pytest.mark.slow
def test_plan_from_a_random_state_completes_the_task(tasks):
    """Wander with random valid actions, then follow the plan: it must win, and be no longer
    than the walkthrough plus the undoing the wandering made necessary (at most 2 extra steps)."""
    rng = random.Random(1)
    env = HouseholdEnv()
    for task in tasks[:10]:
        for _ in range(2):
            env.reset(task)
            for _ in range(rng.randint(1, 6)):
                if env.step(rng.choice(env.valid_actions()))[2]:
                    break
            else:
                plan = plan_from(spec_for(task), env.facts())
                assert 1 <= len(plan) <= len(spec_for(task).walkthrough()) + 2
                results = [env.step(action) for action in plan]
                assert not any(r[4]["invalid_action"] for r in results), (task.task_id, plan)
                assert results[-1][4]["success"], (task.task_id, plan)


def test_diagnosis_points_at_the_first_turn_without_progress(tasks):
    env = HouseholdEnv()
    task = tasks[1]
    walkthrough = env.expert_actions(task)
    assert env.diagnose(task, walkthrough) is None  # solved
    assert env.diagnose(task, walkthrough[:-1]) is None  # every turn made progress
    detour = env.diagnose(task, [walkthrough[0], "look", *walkthrough[1:-1]])
    assert detour.rollback_step == 2 and "'look' did not bring you closer" in detour.summary
    assert f"Instead: {walkthrough[1]}." in detour.summary
    invalid = env.diagnose(task, ["xyzzy"])
    assert invalid.rollback_step == 1 and "not a valid action" in invalid.summary and walkthrough[0] in invalid.summary
    silent = env.diagnose(task, [walkthrough[0], None])
    assert silent.rollback_step == 2 and "no 'Action:' line" in silent.summary
