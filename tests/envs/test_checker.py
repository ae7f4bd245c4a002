"""check_env accepts a correct environment and pinpoints each kind of broken one."""

import itertools

import pytest

from leafe.envs.checker import EnvCheckError, check_env
from leafe.types import Task
from tests.line_world import LineWorld, SnapshotLineWorld

TASKS = [Task(f"line/{goal}", "test", {"goal": goal}) for goal in (3, 5)]


def test_correct_env_passes_every_check():
    report = check_env(SnapshotLineWorld, TASKS)
    assert report.tasks_checked == 2 and report.snapshot_checked and report.experts_checked == 2
    assert report.steps_checked > 0


def test_env_without_optional_parts_passes():
    report = check_env(LineWorld, TASKS)
    assert not report.snapshot_checked and report.experts_checked == 0


class _Counter:
    counter = itertools.count()


class NondeterministicReset(SnapshotLineWorld):
    def reset(self, task):
        observation, info = super().reset(task)
        return f"{observation} (visit {next(_Counter.counter)})", info


class NondeterministicStep(SnapshotLineWorld):
    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        return f"{observation} #{next(_Counter.counter)}", reward, terminated, truncated, info


class ShallowSnapshot(SnapshotLineWorld):
    def snapshot(self):
        return self  # not a copy: later steps change it

    def restore(self, snapshot):
        pass


class WrongExpert(SnapshotLineWorld):
    def expert_actions(self, task):
        return ["left"]


class NumpyInfo(SnapshotLineWorld):
    def step(self, action):
        observation, reward, terminated, truncated, info = super().step(action)
        return observation, reward, terminated, truncated, {**info, "where": object()}


@pytest.mark.parametrize(
    "env_class, check",
    [
        (NondeterministicReset, "reset"),
        (NondeterministicStep, "determinism"),
        (ShallowSnapshot, "snapshot"),
        (WrongExpert, "expert"),
        (NumpyInfo, "JSON"),
    ],
)
def test_broken_env_is_caught(env_class, check):
    with pytest.raises(EnvCheckError, match=check):
        check_env(env_class, TASKS)


@pytest.mark.parametrize("split", ["train", "test"])
def test_sokoban_from_config_passes_check_env(split):
    from leafe.config import config_from_dict
    from leafe.envs import build_env

    make_env, tasks = build_env(config_from_dict({}).env)
    report = check_env(make_env, tasks.tasks(split, 10))
    assert report.tasks_checked == 10 and report.snapshot_checked and report.experts_checked == 10
