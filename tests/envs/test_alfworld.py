"""ALFWorld adapter on a tiny fixture in ALFWorld's own file format (tests/fixtures/alfworld).

Discovery, splits and error messages need only the files. Playing needs the ``alfworld`` package
and TextWorld's PDDL engine (``pip install 'leafe[alfworld]'``, part of the ``dev`` extra, so CI
plays the fixture); those tests are skipped where it is missing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from leafe.envs.alfworld import AlfworldDataError, AlfworldTasks, discover_games, resolve_data_dir

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "alfworld"
TRAIN_GAME = "json_2.1.1/train/pick_and_place_simple-Apple-None-Fridge-1/trial_T20190901_000001_000001/game.tw-pddl"


def test_discovery_keeps_what_alfworld_keeps():
    # Skipped: a movable-receptacle trial, an unsolvable game, a trial without a game file.
    games = discover_games(FIXTURE, "train", ("pick_and_place_simple", "pick_cool_then_place_in_recep", "pick_clean_then_place_in_recep", "pick_and_place_with_movable_recep"))
    assert [game.game_file for game in games] == [TRAIN_GAME]
    assert games[0].task_type == "pick_and_place_simple"


def test_splits_map_to_alfworld_folders_and_never_overlap():
    source = AlfworldTasks(FIXTURE)
    train, test = source.tasks("train"), source.tasks("test")
    assert [task.task_id for task in train] == ["alfworld/train/0000"] and train[0].params["game_file"] == TRAIN_GAME
    assert [task.params["game_file"].split("/")[1] for task in test] == ["valid_unseen"]
    seen = AlfworldTasks(FIXTURE, test_split="valid_seen").tasks("test")
    assert seen[0].params["task_type"] == "look_at_obj_in_light"
    assert not {t.params["game_file"] for t in train} & {t.params["game_file"] for t in test + seen}


def test_task_type_filter_and_counts():
    with pytest.raises(AlfworldDataError, match="no solvable game of task types"):
        AlfworldTasks(FIXTURE, task_types=["pick_two_obj_and_place"]).tasks("train")
    with pytest.raises(ValueError, match="only 1 train games"):
        AlfworldTasks(FIXTURE).tasks("train", 2)
    with pytest.raises(ValueError, match="task_types must be a non-empty subset"):
        AlfworldTasks(FIXTURE, task_types=["make_coffee"])


def test_missing_data_names_the_variable_and_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(AlfworldDataError, match=r"env.data_dir: not set and \$ALFWORLD_DATA is empty"):
        resolve_data_dir(None)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    with pytest.raises(AlfworldDataError, match=rf"\$ALFWORLD_DATA: {tmp_path}/json_2.1.1 does not exist"):
        resolve_data_dir(None)
    with pytest.raises(AlfworldDataError, match=rf"env.data_dir: {tmp_path}/json_2.1.1 does not exist"):
        resolve_data_dir(tmp_path)
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    with pytest.raises(AlfworldDataError, match="has no 'valid_unseen' split"):
        AlfworldTasks().tasks("test")
    monkeypatch.setenv("ALFWORLD_DATA", str(FIXTURE))
    assert len(AlfworldTasks().tasks("test")) == 1


def test_unreadable_traj_data_names_the_file(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(FIXTURE / "json_2.1.1", root / "json_2.1.1")
    broken = next((root / "json_2.1.1" / "valid_seen").rglob("traj_data.json"))
    broken.write_text("{not json")
    with pytest.raises(AlfworldDataError, match=f"{broken}: cannot read it as JSON"):
        discover_games(root, "valid_seen", ("look_at_obj_in_light",))


def test_cli_reports_missing_data_without_a_traceback(tmp_path, monkeypatch, capsys):
    pytest.importorskip("alfworld")
    from leafe.cli import main

    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    config = tmp_path / "alf.yaml"
    config.write_text("env:\n  name: alfworld\n")
    assert main(["check-env", str(config), "--tasks", "1"]) == 2
    assert "ALFWORLD_DATA" in capsys.readouterr().err


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("alfworld")
    pytest.importorskip("fast_downward")
    from leafe.envs.alfworld import AlfworldEnv

    return AlfworldEnv


@pytest.mark.slow
@pytest.mark.parametrize("test_split", ["valid_unseen", "valid_seen"])
def test_fixture_games_pass_check_env(engine, test_split):
    from leafe.envs.checker import check_env

    source = AlfworldTasks(FIXTURE, test_split=test_split)
    report = check_env(lambda: engine(source.data_dir), source.tasks("train") + source.tasks("test"))
    assert report.tasks_checked == 2 and report.experts_checked == 2 and not report.snapshot_checked


def test_expert_is_the_walkthrough_else_the_planner(engine):
    source = AlfworldTasks(FIXTURE)
    env = engine(source.data_dir)
    train, test = source.tasks("train")[0], source.tasks("test")[0]
    recorded = json.loads((FIXTURE / TRAIN_GAME).read_text())["walkthrough"]
    assert env.expert_actions(train) == recorded
    planned = env.expert_actions(test)  # this game file has no walkthrough
    assert "heat mug 1 with microwave 1" in planned and planned[-1] == "move mug 1 to countertop 1"


def test_play_goal_feedback_and_invalid_actions(engine):
    source = AlfworldTasks(FIXTURE)
    env = engine(source.data_dir)
    task = source.tasks("train")[0]
    observation, info = env.reset(task)
    assert "Your task is to: put a apple in fridge." in info["instruction"]
    assert "you see a cabinet 1, a countertop 1, and a fridge 1" in observation and "go to fridge 1" in observation
    observation, reward, terminated, _, info = env.step("take apple 1 from countertop 1")
    assert info["invalid_action"] and reward == 0 and not terminated and "Valid actions: go to cabinet 1" in observation
    observation, *_ = env.step("go to countertop")  # instance number left out
    assert "You arrive at countertop 1" in observation and "apple 1" in observation
    results = [env.step(action) for action in ["take apple", "go to fridge", "open fridge", "put apple in fridge"]]
    assert results[-1][1] == 1.0 and results[-1][2] and results[-1][4]["success"]
    assert results[-1][4]["command"] == "move apple 1 to fridge 1"


def test_build_env_from_config(engine):
    from leafe.config import config_from_dict
    from leafe.envs import build_env

    cfg = config_from_dict({"env": {"name": "alfworld", "data_dir": str(FIXTURE), "test_split": "valid_seen"}})
    make_env, source = build_env(cfg.env)
    task = source.tasks("test", 1)[0]
    env = make_env()
    env.reset(task)
    results = [env.step(action) for action in env.expert_actions(task)]
    assert results[-1][4]["success"]
