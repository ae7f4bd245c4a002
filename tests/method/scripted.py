"""Scripted policies and reflectors for the method tests."""

from __future__ import annotations

import re
from collections import deque

from leafe.envs.sokoban import SokobanEnv, room_for
from leafe.envs.sokoban_solver import MOVES, solve
from leafe.method.reflect import Reflection
from leafe.policy.base import Generation
from leafe.prompting import missing_action_feedback
from leafe.types import Step

LESSONS = "Lessons from your earlier attempts"


class FunctionPolicy:
    """Answers each request with ``reply(prompt)``; a prompt costs one token per word, a reply
    one per word (at least 1). Records every batch and every token it handed out."""

    name = "scripted"

    def __init__(self, reply):
        self.reply = reply
        self.batches = []
        self.tokens = 0

    def generate(self, requests, params):
        self.batches.append([request.prompt for request in requests])
        out = []
        for request in requests:
            text = self.reply(request.prompt)
            prompt_text = request.prompt if isinstance(request.prompt, str) else str(request.prompt)
            generation = Generation(text, prompt_text, len(prompt_text.split()), max(1, len(text.split())), "stop")
            self.tokens += generation.prompt_tokens + generation.completion_tokens
            out.append(generation)
        return out


def turn_of(prompt: str) -> int:
    """The turn a completion-format prompt asks for (history window must show every turn)."""
    return prompt.count("Observation:") - 1


def line_policy(bad_script, good="right"):
    """LineWorld: play ``bad_script`` by turn, or ``good`` once a lesson is in the prompt."""

    def reply(prompt):
        if LESSONS in prompt:
            return f" lesson says so\nAction: {good}"
        return f" step\nAction: {bad_script[min(turn_of(prompt), len(bad_script) - 1)]}"

    return FunctionPolicy(reply)


class FixedReflector:
    """Always rolls back to ``step(at_step)`` with a numbered summary; counts its calls."""

    name = "fixed"

    def __init__(self, step=lambda at_step: at_step, tokens=0):
        self.step = step
        self.tokens = tokens
        self.calls = []

    def reflect(self, queries):
        self.calls.append(len(queries))
        return [
            Reflection(self.step(len(q.steps)), f"lesson {len(q.steps)}", self.name, len(q.steps), "", ("raw",), self.tokens, 0)
            for q in queries
        ]


_STATE = re.compile(r"Player: row (\d+), col (\d+)\. Box(?:es)?: ([^.]*)\.")


def sokoban_state(prompt: str):
    """(player, boxes) of the last observation in a prompt."""
    player_row, player_col, boxes = _STATE.findall(prompt)[-1]
    cells = frozenset((int(r), int(c)) for r, c in re.findall(r"row (\d+), col (\d+)", boxes))
    return (int(player_row), int(player_col)), cells


def deadlock_path(task):
    """A shortest action sequence whose last push makes the room unsolvable (breadth-first)."""
    env = SokobanEnv()
    env.reset(task)
    start = env.snapshot()
    queue, seen = deque([(start, [])]), {(start.player, start.boxes)}
    while queue:
        state, actions = queue.popleft()
        for action in MOVES:
            env.restore(state)
            _obs, _reward, terminated, _truncated, info = env.step(action)
            after = env.snapshot()
            if info["deadlock"]:
                return actions + [action]
            if not terminated and (after.player, after.boxes) not in seen:
                seen.add((after.player, after.boxes))
                queue.append((after, actions + [action]))
    return None


def sokoban_policy(task, bad_path):
    """Follows ``bad_path`` (by state) until a lesson is in the prompt, then the solver's plan."""
    room = room_for(task)
    env = SokobanEnv()
    env.reset(task)
    bad = {}
    for action in bad_path:
        state = env.snapshot()
        bad[(state.player, state.boxes)] = action
        env.step(action)

    def reply(prompt):
        player, boxes = sokoban_state(prompt)
        if LESSONS in prompt:
            action = solve(room.walls, room.goals, boxes, player)[0]
        else:
            action = bad.get((player, boxes), "up")
        return f" thinking\nAction: {action}"

    return FunctionPolicy(reply)


def play_steps(env, task, actions, on_step=None):
    """(initial observation, steps) of playing ``actions`` (``None``: a reply without an action);
    ``on_step(env)`` is called after every turn."""
    initial, _info = env.reset(task)
    steps, current = [], initial
    for action in actions:
        if action is None:
            steps.append(Step("p", "c", None, missing_action_feedback(current), 0.0, False, False, 1, 1, {"parse_error": True}))
        else:
            observation, reward, terminated, truncated, info = env.step(action)
            steps.append(Step("p", "c", action, observation, reward, terminated, truncated, 1, 1, info))
            current = observation
        if on_step is not None:
            on_step(env)
    return initial, steps
