"""Household environment: real TextWorld games compiled offline, real engine, no mocks.

Games are compiled into the leafe cache on first use (~0.5 s each) and reused afterwards; the
tests share the first few train and test games so a fresh cache compiles about twenty.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

pytest.importorskip("textworld")

from leafe.config import ConfigError, config_from_dict, load_config  # noqa: E402
from leafe.envs import _require, build_env  # noqa: E402
from leafe.envs.base import SnapshotEnv, TextEnv, replay  # noqa: E402
from leafe.envs.checker import check_env  # noqa: E402
from leafe.envs.household import SUCCESS_TEXT, HouseholdEnv  # noqa: E402
from leafe.envs.household_games import ensure_game, game_digest  # noqa: E402
from leafe.envs.household_scenes import (  # noqa: E402
    ROOMS,
    TASK_TYPES,
    HouseholdTasks,
    SceneSettings,
    make_spec,
    spec_for,
)
from leafe.types import Task  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "household_quickstart.yaml"


@pytest.fixture(scope="module")
def source() -> HouseholdTasks:
    return HouseholdTasks()


@pytest.fixture(scope="module")
def tasks(source: HouseholdTasks) -> list[Task]:
    return source.tasks("train", 10) + source.tasks("test", 5)


def test_env_satisfies_the_contract():
    env = HouseholdEnv()
    assert isinstance(env, TextEnv) and isinstance(env, SnapshotEnv)


def test_walkthroughs_solve_every_game_on_their_last_step(tasks):
    env = HouseholdEnv()
    for task in tasks:
        actions = env.expert_actions(task)
        assert 2 <= len(actions) <= 6
        env.reset(task)
        results = [env.step(action) for action in actions]
        assert [r[1] for r in results] == [0.0] * (len(actions) - 1) + [1.0], task.task_id
        assert [r[2] for r in results] == [False] * (len(actions) - 1) + [True]
        assert results[-1][4]["success"] and SUCCESS_TEXT in results[-1][0]
        assert not any(r[4]["invalid_action"] for r in results)


@pytest.mark.parametrize("split", ["train", "test"])
def test_check_env_passes(source, split):
    report = check_env(HouseholdEnv, source.tasks(split, 4))
    assert report.snapshot_checked and report.experts_checked == 4 and report.steps_checked > 0


@pytest.mark.slow
def test_check_env_command_on_the_quickstart_config(capsys):
    from leafe.cli import main

    assert main(["check-env", str(CONFIG), "--tasks", "2"]) == 0
    out = capsys.readouterr().out
    assert "household train: OK" in out and "household test: OK" in out


def test_every_task_type_is_generated_and_splits_are_disjoint(source):
    train, test = source.tasks("train", 60), source.tasks("test", 15)
    train_specs = {spec_for(task).to_json() for task in train}
    test_specs = {spec_for(task).to_json() for task in test}
    assert len(train_specs) == 60 and len(test_specs) == 15 and not train_specs & test_specs
    assert {spec_for(task).task_type for task in train} == set(TASK_TYPES)
    assert all(source.split_of(spec_for(task)) == task.split for task in train + test)
    fresh = HouseholdTasks()  # same order in a new source (as in a new process)
    assert fresh.tasks("test", 15) == test and fresh.tasks("train", 60) == train


def test_spec_follows_the_task_type_rules():
    for seed in range(300):
        spec = make_spec(seed, SceneSettings())
        names = [item.name for item in spec.receptacles]
        assert len(names) == len(set(names)) == 4
        source = dict(spec.placements)[spec.target]
        assert source in names and source != spec.destination
        appliance = spec.appliance()
        if spec.task_type == "look_at_obj_in_light":
            assert spec.destination is None and spec.lamp and spec.walkthrough()[-1] == f"use {spec.lamp}"
        else:
            assert spec.destination in names
        if appliance is not None:
            assert appliance.name != spec.destination
            assert any(step.endswith(f"{spec.target} with {appliance.name}") for step in spec.walkthrough())


def test_object_names_in_a_room_share_no_word():
    # TextWorld's parser would have to ask "which do you mean" otherwise.
    for room in ROOMS:
        names = [name for name, _ in room.receptacles] + [name for name, _ in room.objects] + [room.lamp or "-"]
        words = [word for name in names for word in name.split()]
        repeated = {word for word in words if words.count(word) > 1}
        assert not repeated, f"{room.name}: {sorted(repeated)}"


def test_invalid_action_changes_nothing_and_says_what_is_valid(tasks):
    env = HouseholdEnv()
    task = tasks[1]
    env.reset(task)
    before = env.valid_actions()
    observation, reward, terminated, truncated, info = env.step("take the unicorn from the moon")
    assert info["invalid_action"] and reward == 0.0 and not terminated and not truncated
    assert "That's not a valid action" in observation and "You can't see any such thing" in observation
    first = env.expert_actions(task)[0]
    assert f"Valid actions: " in observation and first in observation
    assert env.valid_actions() == before
    results = [env.step(action) for action in env.expert_actions(task)]
    assert results[-1][4]["success"]


def test_closed_container_refusal_comes_from_the_game(source):
    env = HouseholdEnv()
    task = next(t for t in source.tasks("train", 40) if spec_for(t).walkthrough()[0].startswith("open "))
    spec = spec_for(task)
    env.reset(task)
    take = spec.walkthrough()[1]  # "take X from Y" while Y is still closed
    observation, _, _, _, info = env.step(take)
    assert info["invalid_action"] and "The game says:" in observation
    observation, _, _, _, info = env.step(spec.walkthrough()[0])
    assert not info["invalid_action"] and "You open" in observation


def test_shorthand_commands_reach_the_engine(tasks):
    env = HouseholdEnv()
    task = next(t for t in tasks if spec_for(t).walkthrough()[-1].startswith(("insert ", "put ")))
    spec = spec_for(task)
    env.reset(task)
    for action in spec.walkthrough()[:-1]:
        env.step(action.upper() + ".")  # case and punctuation do not matter
    destination = spec.destination
    observation, reward, terminated, _, info = env.step(f"Put the {spec.target} in the {destination}")
    assert info["command"] == spec.walkthrough()[-1] and reward == 1.0 and terminated


def test_every_valid_action_is_tracked_by_textworld(tasks):
    """Random walks over valid actions: each one must be seen by TextWorld's state tracking,
    or the valid-action list would drift from the interpreter's real state."""
    env = HouseholdEnv()
    rng = random.Random(0)
    for task in tasks[:8]:
        env.reset(task)
        for _ in range(15):
            action = rng.choice(env.valid_actions())
            _, _, terminated, _, info = env.step(action)
            assert info["tracked"] and not info["invalid_action"], (task.task_id, action)
            if terminated:
                break


def test_snapshot_restores_across_tasks_and_environments(tasks):
    env, other = HouseholdEnv(), HouseholdEnv()
    walkthrough = env.expert_actions(tasks[0])
    env.reset(tasks[0])
    env.step(walkthrough[0])
    snapshot = env.snapshot()
    continuation = [env.step(action) for action in walkthrough[1:]]
    env.reset(tasks[1])  # a different game in between
    env.restore(snapshot)
    assert [env.step(action) for action in walkthrough[1:]] == continuation
    other.restore(snapshot)  # a fresh environment that never played this game
    assert [other.step(action) for action in walkthrough[1:]] == continuation


def test_replay_matches_the_played_episode(tasks):
    env = HouseholdEnv()
    actions = ["look", "xyzzy"] + env.expert_actions(tasks[2])[:-1]
    env.reset(tasks[2])
    last = [env.step(action) for action in actions][-1]
    assert replay(HouseholdEnv(), tasks[2], actions).observation == last[0]


@pytest.mark.slow
def test_compiled_games_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAFE_CACHE", str(tmp_path))
    spec = make_spec(7, SceneSettings(num_receptacles=2, num_distractors=0))
    story = ensure_game(spec)
    assert story.parent == tmp_path / "household" and story.with_suffix(".json").is_file()
    stamp = story.stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_game(spec) == story
    assert time.perf_counter() - started < 0.05 and story.stat().st_mtime_ns == stamp
    assert game_digest(make_spec(8, SceneSettings(num_receptacles=2, num_distractors=0))) != game_digest(spec)
    assert sorted(p.suffix for p in (tmp_path / "household").iterdir() if not p.name.startswith(".")) == [".json", ".z8"]


def test_build_env_from_config(tasks):
    cfg = config_from_dict({"env": {"name": "household", "num_distractors": 0, "show_valid_actions": False}})
    make_env, source = build_env(cfg.env)
    task = source.tasks("test", 1)[0]
    env = make_env()
    observation, info = env.reset(task)
    assert "Valid actions" not in observation and spec_for(task).goal() in info["instruction"]
    assert len(spec_for(task).placements) == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("env.num_rooms=2", "env.num_rooms: unknown field"),
        ("env.num_recptacles=3", "did you mean 'num_receptacles'"),
        ("env.num_receptacles=1", "env.num_receptacles: Input should be greater than or equal to 2"),
        ("env.task_types=[pick_and_place]", "env.task_types.0: Input should be"),
        ("env.task_types=[]", "env.task_types: must name at least one task type"),
        ("env.name=houshold", "env.name: unknown environment; expected one of: sokoban, coding, household, alfworld, shop, webshop, scienceworld (got 'houshold')"),
    ],
)
def test_config_errors_name_the_field(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(CONFIG, [override])
    assert message in str(error.value) and "env.household" not in str(error.value)


def test_missing_optional_package_names_the_env():
    with pytest.raises(ConfigError, match="env.name: 'household' needs the 'no_such_package_xyz' package"):
        _require("no_such_package_xyz", "household", "pip install 'leafe[household]'")


@pytest.mark.slow
def test_eval_with_the_embedded_model_on_household_games(tmp_path):
    """The whole path with the real default model: config -> games -> rollout -> Pass@k report."""
    import json

    from leafe.cli import main

    args = [
        "eval", str(CONFIG), "name=e2e", f"output_dir={tmp_path}", "eval.num_tasks=1", "eval.samples_per_task=2",
        "eval.ks=[1,2]", "rollout.max_steps=2", "policy.max_new_tokens=24",
    ]
    assert main(args) == 0
    run = tmp_path / "e2e"
    assert (run / "summary.md").is_file() and (run / "metrics.json").is_file()
    episodes = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 2
    for trajectory in episodes:
        assert trajectory["task"]["task_id"] == "household/test/0000"
        assert "Your task is to:" in trajectory["instruction"] and "Valid actions:" in trajectory["initial_observation"]
        for step in trajectory["steps"]:
            assert step["prompt"].endswith("Thought:") and step["observation"]
            assert step["action"] is None or "task_type" in step["info"]
