"""Rollback by restore and by replay reaches the recorded state; a changed state is caught."""

from leafe.envs.sokoban import SokobanEnv, SokobanTasks
from leafe.method.rollback import roll_back
from leafe.types import Task
from tests.line_world import FlakyLineWorld, LineWorld
from tests.method.scripted import play_steps


def _recorded():
    task = SokobanTasks().tasks("train", 1)[0]
    expert = SokobanEnv().expert_actions(task)
    actions = ["left", None, "up", "jump"] + expert  # wasted turns first, then a solution from wherever
    snapshots = []
    initial, steps = play_steps(SokobanEnv(terminate_on_deadlock=False), task, actions, lambda env: snapshots.append(env.snapshot()))
    return task, initial, steps, snapshots


def test_replay_and_restore_reach_the_recorded_state():
    task, initial, steps, snapshots = _recorded()
    for length in range(len(steps)):
        acted = [i for i in range(length) if steps[i].action is not None]
        following = steps[length]
        for snapshot in (None, snapshots[acted[-1] - 1] if acted and acted[-1] > 0 else None):
            env = SokobanEnv(terminate_on_deadlock=False)
            rollback = roll_back(env, task, initial, steps[:length], snapshot)
            assert rollback.mismatch is None and rollback.instruction
            if not acted:
                assert (rollback.method, rollback.env_steps) == ("reset", 0)
            elif snapshot is None:
                assert (rollback.method, rollback.env_steps) == ("replay", len(acted))
            else:
                assert (rollback.method, rollback.env_steps) == ("restore", 1)
            if following.action is not None:  # the state continues exactly as recorded
                assert env.step(following.action)[0] == following.observation


def test_nondeterministic_environment_is_caught():
    task = Task("line/3", "train", {"goal": 3})
    initial, steps = play_steps(FlakyLineWorld(), task, ["right", "right"])
    assert roll_back(FlakyLineWorld(), task, initial, steps[:0]).mismatch is None
    rollback = roll_back(FlakyLineWorld(), task, initial, steps[:2])
    assert rollback.method == "replay" and rollback.env_steps == 1
    assert rollback.mismatch.startswith("step 1 ('right'): recorded 'You are at 1. (tick")


def test_changed_reset_is_caught():
    task = Task("line/3", "train", {"goal": 3})
    rollback = roll_back(LineWorld(), task, "You are at 7.", [])
    assert rollback.mismatch == "reset: recorded 'You are at 7.', rebuilt 'You are at 0.'"
