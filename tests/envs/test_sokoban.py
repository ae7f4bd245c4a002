"""Sokoban environment and task source: real generation, real solver, no mocks."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from leafe.envs.base import SnapshotEnv, TextEnv, replay
from leafe.envs.sokoban import (
    Room,
    SokobanEnv,
    SokobanState,
    SokobanTasks,
    generate_room,
    parse_action,
    room_for,
)
from leafe.types import Task

INFO_KEYS = {"success", "invalid_action", "moved", "pushed", "deadlock", "boxes_on_goals", "num_boxes"}


@pytest.fixture(scope="module")
def source() -> SokobanTasks:
    return SokobanTasks()


def hand_made(text: str) -> SokobanState:
    """A start state for a hand-drawn map in the observation legend (# _ O X V P S)."""
    rows = text.strip().splitlines()
    cells = {(r, c): ch for r, row in enumerate(rows) for c, ch in enumerate(row)}
    walls = np.array([[ch == "#" for ch in row] for row in rows])
    boxes = frozenset(pos for pos, ch in cells.items() if ch in "XV")
    (player,) = [pos for pos, ch in cells.items() if ch in "PS"]
    goals = frozenset(pos for pos, ch in cells.items() if ch in "OVS")
    room = Room(walls=walls, goals=goals, boxes=boxes, player=player, layout=text.encode())
    return SokobanState(room=room, player=player, boxes=boxes)


def play(env: SokobanEnv, actions: list[str]) -> list[tuple]:
    return [env.step(action) for action in actions]


def test_env_satisfies_the_contract():
    env = SokobanEnv()
    assert isinstance(env, TextEnv) and isinstance(env, SnapshotEnv)
    assert env.action_words == ("up", "down", "left", "right")


def test_expert_solutions_solve_train_and_test_tasks(source):
    env = SokobanEnv()
    for task in source.tasks("train", 30) + source.tasks("test", 30):
        actions = env.expert_actions(task)
        assert 2 <= len(actions) <= 20
        env.reset(task)
        results = play(env, actions)
        rewards = [reward for _, reward, _, _, _ in results]
        assert rewards == [0.0] * (len(actions) - 1) + [1.0], task.task_id
        assert [terminated for _, _, terminated, _, _ in results] == rewards
        assert not any(truncated for _, _, _, truncated, _ in results)
        observation, _, _, _, info = results[-1]
        assert info["success"] and info["boxes_on_goals"] == info["num_boxes"] == 1
        assert "the puzzle is solved" in observation.splitlines()[0]


def test_task_ids_and_params(source):
    tasks = source.tasks("test", 3)
    assert [task.task_id for task in tasks] == ["sokoban/test/0000", "sokoban/test/0001", "sokoban/test/0002"]
    assert all(task.split == "test" for task in tasks)
    assert set(tasks[0].params) == {"seed", "dim", "num_boxes", "num_steps"}
    assert tasks[0].params["dim"] == [6, 6]
    # Params alone determine the room: a JSON round trip regenerates the same layout.
    again = Task.from_dict(json.loads(json.dumps(tasks[0].to_dict())))
    assert room_for(again).layout == room_for(tasks[0]).layout


def test_splits_are_disjoint_and_without_duplicates(source):
    train = [room_for(task).layout for task in source.tasks("train", 200)]
    test = [room_for(task).layout for task in source.tasks("test", 50)]
    assert len(set(train)) == 200 and len(set(test)) == 50
    assert not set(train) & set(test)
    train_seeds = {task.params["seed"] for task in source.tasks("train", 200)}
    assert not train_seeds & {task.params["seed"] for task in source.tasks("test", 50)}


def test_task_lists_are_stable(source):
    fresh = SokobanTasks()
    assert fresh.tasks("test", 20) == source.tasks("test", 20)
    assert fresh.tasks("train", 5) == source.tasks("train", 5)  # order of calls does not matter


def test_same_task_gives_same_room_even_after_the_cache_is_cleared(source):
    task = source.tasks("train", 1)[0]
    first, _ = SokobanEnv().reset(task)
    generate_room.cache_clear()
    second, _ = SokobanEnv().reset(task)
    assert first == second


def test_different_seeds_give_mostly_different_rooms():
    layouts = {generate_room(seed, (6, 6), 1, 20).layout for seed in range(50)}
    assert len(layouts) >= 40


def test_generation_leaves_global_rng_untouched():
    random.seed(123)
    np.random.seed(123)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    generate_room(987_654, (6, 6), 1, 20)  # not generated before in this process
    with pytest.raises(RuntimeError, match="failed"):
        generate_room(1, (5, 5), 3, 3)  # gym-sokoban fails on every retry with these settings
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]


def test_observation_and_instruction(source):
    env = SokobanEnv()
    observation, info = env.reset(source.tasks("test", 1)[0])
    for word in ("up", "down", "left", "right", "#", "wall", "goal", "box", "push"):
        assert word in info["instruction"].lower()
    lines = observation.splitlines()
    assert len(lines) == 7 and all(len(line) == 6 for line in lines[:6])
    assert lines[6].startswith("Player: row ") and " Box: row " in lines[6] and " Goal: row " in lines[6]
    assert sum(line.count("P") for line in lines[:6]) == 1
    assert set(info) >= INFO_KEYS


def test_same_actions_give_identical_results(source):
    task = source.tasks("train", 3)[2]
    actions = ["left", "up", "nonsense", "right", "down", "down", "left", "up", "right"]
    runs = []
    for _ in range(2):
        env = SokobanEnv(terminate_on_deadlock=False)
        runs.append([env.reset(task), *play(env, actions)])
    assert runs[0] == runs[1]
    for _, _, _, _, info in runs[0][1:]:
        assert set(info) == INFO_KEYS
        assert all(type(info[key]) is bool for key in INFO_KEYS - {"boxes_on_goals", "num_boxes"})
        assert type(info["boxes_on_goals"]) is int and type(info["num_boxes"]) is int
        json.dumps(info)


def test_snapshot_restore_reproduces_the_continuation(source):
    tasks = source.tasks("test", 2)
    env = SokobanEnv(terminate_on_deadlock=False)
    env.reset(tasks[0])
    play(env, ["up", "left"])
    snap = env.snapshot()
    continuation = ["down", "right", "right", "up", "left", "down"]
    expected = play(env, continuation)
    env.restore(snap)
    assert play(env, continuation) == expected
    env.reset(tasks[1])  # a different room in between
    env.restore(snap)
    assert play(env, continuation) == expected
    # Generic replay agrees with the snapshot path.
    assert replay(env, tasks[0], ["up", "left", *continuation]).observation == expected[-1][0]


def test_invalid_action_leaves_state_unchanged(source):
    env = SokobanEnv()
    start, _ = env.reset(source.tasks("test", 1)[0])
    before = env.snapshot()
    observation, reward, terminated, truncated, info = env.step("  jump over it ")
    assert observation == "Invalid action: 'jump over it'. Valid actions: up, down, left, right.\n" + start
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["invalid_action"] and not info["moved"] and not info["pushed"]
    assert env.snapshot() == before


@pytest.mark.parametrize("text", ["left", " LEFT ", "Left.", "'left'", '"left"', "move left", "Go left!", "push: left"])
def test_action_parsing_accepts_variants(text):
    assert parse_action(text) == "left"


@pytest.mark.parametrize("text", ["", "l", "leftt", "turn left", "left right", "move", "up down"])
def test_action_parsing_rejects_others(text):
    assert parse_action(text) is None


# One box at (2,2), goal at (4,1), player at (3,2) under the box.
ROOM = """
######
##___#
#_X__#
#_P__#
#O___#
######
"""


def first_line(env: SokobanEnv, action: str) -> str:
    return env.step(action)[0].splitlines()[0]


def test_feedback_messages():
    env = SokobanEnv()
    env.restore(hand_made(ROOM))
    assert first_line(env, "left") == "You moved left."
    observation, _, _, _, info = env.step("left")
    assert observation.splitlines()[0] == "You walked into a wall; nothing changed."
    assert not info["moved"] and not info["invalid_action"]
    env.restore(hand_made("#####\n#_PX#\n#___#\n#__O#\n#####"))
    observation, _, _, _, info = env.step("right")
    assert observation.splitlines()[0] == "The box can't move right: a wall is behind it; nothing changed."
    assert observation.splitlines()[2] == "#_PX#" and not info["moved"] and not info["pushed"]
    env.restore(hand_made("#######\n#PXX_O#\n#____O#\n#######"))
    assert first_line(env, "right") == "The box can't move right: another box is behind it; nothing changed."
    env.restore(hand_made("#######\n#PV___#\n#__X_O#\n#######"))
    assert first_line(env, "right") == "You pushed the box right off a goal."


def test_push_onto_goal_solves_and_step_after_end_raises():
    env = SokobanEnv()
    env.restore(hand_made("#####\n#PXO#\n#####"))
    observation, reward, terminated, truncated, info = env.step("right")
    assert observation.splitlines()[:3] == [
        "You pushed the box right onto a goal. All boxes are on goals: the puzzle is solved!",
        "#####",
        "#_PV#",
    ]
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert info["success"] and info["pushed"] and info["boxes_on_goals"] == 1
    with pytest.raises(RuntimeError, match="reset"):
        env.step("left")


def test_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        SokobanEnv().step("up")


def test_corner_push_is_reported_and_terminates():
    env = SokobanEnv()
    env.restore(hand_made(ROOM))
    observation, reward, terminated, _, info = env.step("up")
    assert observation.splitlines()[0] == (
        "You pushed the box up. The box at row 1, col 2 is stuck in a corner and can no longer reach a goal."
    )
    assert (reward, terminated) == (0.0, True)
    assert info["deadlock"] and info["pushed"] and not info["success"]


def test_unsolvable_push_found_by_the_solver():
    env = SokobanEnv(terminate_on_deadlock=False)
    env.restore(hand_made(ROOM))
    for action in ("left", "up", "right"):  # the last pushes the box to (2,3): still solvable
        observation, _, terminated, _, info = env.step(action)
    assert info["pushed"] and not info["deadlock"]
    # Box to (2,4), against the right wall: not a corner, but it can never reach the goal.
    observation, _, terminated, _, info = env.step("right")
    assert observation.splitlines()[0] == (
        "You pushed the box right. The box can no longer reach a goal: the puzzle is now unsolvable."
    )
    assert info["deadlock"] and not terminated  # terminate_on_deadlock=False keeps playing
    observation, _, _, _, info = env.step("left")
    assert info["deadlock"] and observation.splitlines()[0] == "You moved left."


def test_generated_rooms_can_end_in_a_corner_deadlock(source):
    """Random play on real tasks reaches the corner message, which ends the episode."""
    env, rng = SokobanEnv(), random.Random(0)
    for task in source.tasks("train", 30):
        env.reset(task)
        for _ in range(40):
            observation, reward, terminated, _, info = env.step(rng.choice(env.action_words))
            if terminated:
                break
        if terminated and "stuck in a corner" in observation.splitlines()[0]:
            assert info["deadlock"] and not info["success"] and reward == 0.0
            return
    pytest.fail("no corner deadlock in 30 random episodes")


def test_more_boxes_and_larger_rooms():
    source = SokobanTasks(dim=(7, 7), num_boxes=2, test_fraction=0.5)
    env = SokobanEnv()
    for task in source.tasks("test", 3):
        env.reset(task)
        results = play(env, env.expert_actions(task))
        assert results[-1][1] == 1.0 and results[-1][4]["num_boxes"] == 2
        assert "Boxes: row " in results[-1][0]


def test_task_source_errors(source):
    with pytest.raises(ValueError, match="'validation'"):
        source.tasks("validation", 1)
    with pytest.raises(ValueError, match="count"):
        source.tasks("train")
    assert source.tasks("train", 0) == []
    with pytest.raises(ValueError):
        SokobanTasks(test_fraction=0.0)


def test_split_is_a_function_of_the_layout(source):
    for task in source.tasks("train", 50) + source.tasks("test", 20):
        assert source.split_of(room_for(task)) == task.split
