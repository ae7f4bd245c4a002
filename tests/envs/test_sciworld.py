"""ScienceWorld on its real simulator: check_env, splits, gold demonstrations, invalid and
ambiguous commands, independent episodes on one JVM, pooled instances, clear errors."""

from __future__ import annotations

import gc
import shutil

import pytest

pytest.importorskip("scienceworld")
if shutil.which("java") is None:  # CI has Java 17; elsewhere say why nothing ran
    pytest.skip("ScienceWorld needs a 'java' executable (apt-get install openjdk-17-jre-headless)", allow_module_level=True)

from leafe.config import ConfigError, config_from_dict  # noqa: E402
from leafe.envs import build_env  # noqa: E402
from leafe.envs.base import replay  # noqa: E402
from leafe.envs.checker import check_env  # noqa: E402

TASKS = ["find-non-living-thing", "lifespan-longest-lived"]


@pytest.fixture(scope="module")
def built():
    cfg = config_from_dict({"env": {"name": "scienceworld", "task_names": TASKS}})
    return build_env(cfg.env)


def test_check_env_passes(built):
    make_env, source = built
    report = check_env(make_env, source.tasks("train", 2))
    assert report.tasks_checked == 2 and report.experts_checked == 2 and report.steps_checked > 0


def test_splits_are_scienceworlds_variations_interleaved_and_disjoint(built):
    _make_env, source = built
    train, test = source.tasks("train"), source.tasks("test")
    assert not {t.task_id for t in train} & {t.task_id for t in test}
    assert [t.params["task_name"] for t in test[:4]] == TASKS * 2
    assert source.tasks("test", 4) == test[:4]  # a fixed order
    with pytest.raises(ValueError, match="variations"):
        source.tasks("test", len(test) + 1)


def test_gold_actions_solve_their_tasks_with_rewards_summing_to_one(built):
    make_env, source = built
    env = make_env()
    for task in source.tasks("test", 2):
        observation, info = env.reset(task)
        assert "This room is called" in observation and "Your task is to" in info["instruction"]
        rewards = []
        for action in env.expert_actions(task):
            _obs, reward, terminated, _truncated, info = env.step(action)
            rewards.append(reward)
        assert terminated and info["success"] and info["score"] == 100 and sum(rewards) == pytest.approx(1.0)


def test_an_unknown_command_is_flagged_and_changes_nothing(built):
    make_env, source = built
    env = make_env()
    task = source.tasks("train", 1)[0]
    env.reset(task)
    look = env.step("look around")[0]
    observation, reward, terminated, _truncated, info = env.step("fly to the moon")
    assert info["invalid_action"] and "No known action" in observation and reward == 0 and not terminated
    assert env.step("look around")[0] == look


def test_an_ambiguous_command_uses_its_first_reading(built):
    make_env, source = built
    env = make_env()
    env.reset(source.tasks("train", 1)[0])
    observation, *_rest, info = env.step("focus on door")
    assert observation.startswith("(ambiguous command: used 'focus on door") and not info["invalid_action"]


def test_two_episodes_on_one_jvm_do_not_interfere(built):
    make_env, source = built
    task_a, task_b = source.tasks("test", 2)
    alone = replay(make_env(), task_a, make_env().expert_actions(task_a)[:3]).observation
    a, b = make_env(), make_env()
    a.reset(task_a)
    b.reset(task_b)
    for action_a, action_b in zip(a.expert_actions(task_a)[:3], b.expert_actions(task_b)[:3]):
        last_a = a.step(action_a)[0]
        b.step(action_b)
    assert last_a == alone


def test_a_collected_environment_gives_its_simulator_back(built):
    from leafe.envs.sciworld import _Simulator

    make_env, source = built
    task = source.tasks("train", 1)[0]
    simulator = _Simulator.get()
    for _ in range(5):  # one episode at a time, thrown away: no new simulator instances after the first
        make_env().reset(task)
        gc.collect()
    created = simulator.created
    for _ in range(5):
        make_env().reset(task)
        gc.collect()
    assert simulator.created == created


def test_missing_java_is_a_clear_config_error(monkeypatch):
    import leafe.envs.sciworld as sciworld

    monkeypatch.setattr(sciworld.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="openjdk-17"):
        build_env(config_from_dict({"env": {"name": "scienceworld"}}).env)


def test_config_names_unknown_tasks_and_simplifications():
    with pytest.raises(ConfigError, match="task_names"):
        config_from_dict({"env": {"name": "scienceworld", "task_names": ["find-unicorn"]}})
    with pytest.raises(ConfigError, match="simplification"):
        config_from_dict({"env": {"name": "scienceworld", "simplification": "easy,fly"}})
