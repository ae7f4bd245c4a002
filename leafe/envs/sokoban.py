"""Sokoban as a text environment: rooms from gym-sokoban, a text map, and plain feedback.

Rooms come from gym-sokoban's generator (the one used by the paper). Its package imports the
old ``gym``, so only its standalone ``envs/room_utils.py`` is loaded, by file path. The
generator draws from the global ``random`` and ``np.random`` generators; :func:`generate_room`
seeds both from the task seed and restores their previous state afterwards.

    source = SokobanTasks()
    env = SokobanEnv()
    obs, info = env.reset(source.tasks("test", 10)[0])
    obs, reward, terminated, truncated, info = env.step("left")

Coordinates everywhere are ``(row, col)`` with row 0 at the top and col 0 at the left.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import random
import re
import string
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np

from leafe.envs.base import Diagnosis, StepResult
from leafe.envs.sokoban_solver import MOVES, Pos, SearchLimitExceeded, is_corner_deadlock, solve
from leafe.types import Task

ACTION_WORDS: tuple[str, ...] = tuple(MOVES)

INSTRUCTION = (
    "Push every box onto a goal. Map: # wall, _ floor, O goal, X box, V box on goal, "
    "P you, S you on a goal. Actions: up, down, left, right. Walking into a box pushes it "
    "one square the same way if the square behind it is free; boxes cannot be pulled. "
    "Row 0 is the top row, col 0 the left column."
)

_GENERATION_ATTEMPTS = 50  # derived seeds tried before giving up on one task seed
_DEADLOCK_MAX_NODES = 20_000  # search cap for the after-push solvability check
_MAX_SCAN_WITHOUT_TASK = 2_000  # stream seeds scanned in a row without finding a task
_GENERATION_LOCK = threading.Lock()  # room_utils keeps module-level search state
_ParamsKey = tuple[int, tuple[int, int], int, int]


@functools.cache
def _room_utils() -> ModuleType:
    """gym-sokoban's ``envs/room_utils.py``, loaded by path so ``gym`` is never imported."""
    spec = importlib.util.find_spec("gym_sokoban")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("gym-sokoban is not installed: pip install gym-sokoban")
    path = os.path.join(spec.submodule_search_locations[0], "envs", "room_utils.py")
    module_spec = importlib.util.spec_from_file_location("_leafe_gym_sokoban_room_utils", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@dataclass(frozen=True, eq=False)
class Room:
    """An immutable Sokoban room in its start state, enclosed by a ring of walls.

    Attributes:
        walls: read-only boolean array, ``True`` on walls.
        goals: goal cells.
        boxes: box cells at the start.
        player: player cell at the start.
        layout: canonical bytes of gym-sokoban's (structure, state); equal iff same room.
    """

    walls: np.ndarray
    goals: frozenset[Pos]
    boxes: frozenset[Pos]
    player: Pos
    layout: bytes


def _cells(mask: np.ndarray) -> frozenset[Pos]:
    return frozenset((int(row), int(col)) for row, col in zip(*np.nonzero(mask), strict=True))


def _room_from_arrays(structure: np.ndarray, state: np.ndarray) -> Room:
    """Decode gym-sokoban arrays (0 wall, 1 floor, 2 goal, 3 box on goal, 4 box, 5 player)."""
    walls = structure == 0
    walls.flags.writeable = False
    (player,) = _cells(state == 5)
    height, width = structure.shape
    arrays = structure.astype(np.uint8).tobytes() + state.astype(np.uint8).tobytes()
    layout = f"{height}x{width}:".encode() + arrays
    return Room(walls, _cells(structure == 2), _cells((state == 3) | (state == 4)), player, layout)


def _derived_seed(seed: int, attempt: int) -> int:
    digest = hashlib.sha256(f"sokoban:{seed}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@functools.lru_cache(maxsize=16_384)
def generate_room(seed: int, dim: tuple[int, int], num_boxes: int, num_steps: int) -> Room:
    """The room for ``seed`` (deterministic; cached; global RNG states are left unchanged).

    gym-sokoban sometimes fails ("score == 0", "Not enough free spots"); attempt ``k`` seeds
    both global generators with a hash of ``(seed, k)``, and the first success is the room.
    """
    utils = _room_utils()
    with _GENERATION_LOCK:
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            for attempt in range(_GENERATION_ATTEMPTS):
                attempt_seed = _derived_seed(seed, attempt)
                random.seed(attempt_seed)
                np.random.seed(attempt_seed)
                try:
                    structure, state, _ = utils.generate_room(dim=dim, num_steps=num_steps, num_boxes=num_boxes)
                except (RuntimeError, RuntimeWarning, ValueError):
                    continue
                return _room_from_arrays(structure, state)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
    raise RuntimeError(
        f"gym-sokoban failed {_GENERATION_ATTEMPTS} times for seed={seed}, dim={dim}, "
        f"num_boxes={num_boxes}, num_steps={num_steps}"
    )


def _params_key(params: dict[str, Any]) -> _ParamsKey:
    try:
        height, width = params["dim"]
        dim = (int(height), int(width))
        return int(params["seed"]), dim, int(params["num_boxes"]), int(params["num_steps"])
    except (KeyError, TypeError, ValueError) as error:
        message = f"Sokoban task params need seed, dim=[h, w], num_boxes, num_steps; got {params}"
        raise ValueError(message) from error


def room_for(task: Task) -> Room:
    """The start room of ``task`` (regenerated from ``task.params``; cached)."""
    return generate_room(*_params_key(task.params))


@functools.lru_cache(maxsize=16_384)
def _solution(key: _ParamsKey) -> tuple[str, ...] | None:
    """Shortest solution of the room, or ``None`` if unsolvable or beyond the search cap."""
    room = generate_room(*key)
    try:
        actions = solve(room.walls, room.goals, room.boxes, room.player)
    except SearchLimitExceeded:
        return None
    return None if actions is None else tuple(actions)


class SokobanTasks:
    """Generated Sokoban tasks; train and test are disjoint by construction.

    One seed stream 0, 1, 2, ... is walked. Each room goes to ``"test"`` when a hash of its
    layout, mapped to [0, 1), is below ``test_fraction``, else to ``"train"``, so identical
    layouts always land in the same split. A room is kept when the solver proves it solvable
    with a shortest solution of ``min_solution_length``..``max_solution_length`` steps and its
    layout was not kept before. Task ``i`` of a split is the ``i``-th kept room of that split.

    The source is infinite, so ``tasks(split)`` needs an explicit ``count``.
    """

    def __init__(
        self,
        dim: tuple[int, int] = (6, 6),
        num_boxes: int = 1,
        num_steps: int = 20,
        min_solution_length: int = 2,
        max_solution_length: int = 20,
        test_fraction: float = 0.2,
    ) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        if not 0 <= min_solution_length <= max_solution_length:
            bounds = f"{min_solution_length}..{max_solution_length}"
            raise ValueError(f"need 0 <= min_solution_length <= max_solution_length, got {bounds}")
        self.dim = (int(dim[0]), int(dim[1]))
        self.num_boxes = num_boxes
        self.num_steps = num_steps
        self.min_solution_length = min_solution_length
        self.max_solution_length = max_solution_length
        self.test_fraction = test_fraction
        self._kept: dict[str, list[int]] = {"train": [], "test": []}  # stream seeds per split
        self._seen_layouts: set[bytes] = set()
        self._next_seed = 0

    def split_of(self, room: Room) -> str:
        """``"test"`` or ``"train"``: the split a room's layout belongs to."""
        value = int.from_bytes(hashlib.sha256(room.layout).digest()[:8], "big") / 2**64
        return "test" if value < self.test_fraction else "train"

    def tasks(self, split: str, count: int | None = None) -> list[Task]:
        """The first ``count`` tasks of ``split`` (``"train"`` or ``"test"``), in a fixed order."""
        if split not in self._kept:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        if count is None:
            raise ValueError("SokobanTasks is an infinite source: pass count")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        kept = self._kept[split]
        scanned = 0
        while len(kept) < count:
            if scanned == _MAX_SCAN_WITHOUT_TASK:
                raise RuntimeError(f"no {split} task in {scanned} seeds in a row; check the SokobanTasks settings")
            scanned = 0 if self._consider(self._next_seed) == split else scanned + 1
            self._next_seed += 1
        return [self._task(split, index, seed) for index, seed in enumerate(kept[:count])]

    def _params(self, seed: int) -> dict[str, Any]:
        return {"seed": seed, "dim": list(self.dim), "num_boxes": self.num_boxes, "num_steps": self.num_steps}

    def _task(self, split: str, index: int, seed: int) -> Task:
        return Task(task_id=f"sokoban/{split}/{index:04d}", split=split, params=self._params(seed))

    def _consider(self, seed: int) -> str | None:
        """Keep the room of ``seed`` if acceptable; returns the split it was kept in."""
        key = _params_key(self._params(seed))
        try:
            room = generate_room(*key)
        except RuntimeError:  # gym-sokoban failed on every derived seed: skip this stream seed
            return None
        if room.layout in self._seen_layouts:
            return None
        actions = _solution(key)
        if actions is None or not self.min_solution_length <= len(actions) <= self.max_solution_length:
            return None
        self._seen_layouts.add(room.layout)
        split = self.split_of(room)
        self._kept[split].append(seed)
        return split


_STRIP = string.whitespace + string.punctuation + "\u201c\u201d\u2018\u2019"
_ACTION_PATTERN = re.compile(r"(?:(?:move|push|go)[^a-z]+)?(up|down|left|right)")


def parse_action(text: str) -> str | None:
    """``"up"``/``"down"``/``"left"``/``"right"`` from e.g. ``" Move LEFT."``, else ``None``."""
    match = _ACTION_PATTERN.fullmatch(text.lower().strip(_STRIP))
    return match.group(1) if match else None


def _positions(noun: str, cells: frozenset[Pos]) -> str:
    label = noun if len(cells) == 1 else noun + ("es" if noun.endswith("x") else "s")
    return f"{label}: " + "; ".join(f"row {row}, col {col}" for row, col in sorted(cells)) + "."


def render(room: Room, player: Pos, boxes: frozenset[Pos]) -> str:
    """The map (one line per row) followed by explicit player, box and goal coordinates."""
    height, width = room.walls.shape
    lines = []
    for row in range(height):
        line = ""
        for col in range(width):
            cell, on_goal = (row, col), (row, col) in room.goals
            if room.walls[row, col]:
                line += "#"
            elif cell == player:
                line += "S" if on_goal else "P"
            elif cell in boxes:
                line += "V" if on_goal else "X"
            else:
                line += "O" if on_goal else "_"
        lines.append(line)
    where = f"Player: row {player[0]}, col {player[1]}. {_positions('Box', boxes)} {_positions('Goal', room.goals)}"
    return "\n".join(lines) + "\n" + where


@functools.lru_cache(maxsize=65_536)
def _unsolvable_reason(room: Room, boxes: frozenset[Pos], pushed_box: Pos, player: Pos) -> str:
    """Why the room became unsolvable after a push, or ``""`` when not known to be (cached)."""
    if is_corner_deadlock(room.walls, room.goals, pushed_box):
        row, col = pushed_box
        return f"The box at row {row}, col {col} is stuck in a corner and can no longer reach a goal."
    try:
        solvable = solve(room.walls, room.goals, boxes, player, max_nodes=_DEADLOCK_MAX_NODES) is not None
    except SearchLimitExceeded:
        return ""
    if solvable:
        return ""
    if len(boxes) == 1:
        return "The box can no longer reach a goal: the puzzle is now unsolvable."
    return "The boxes can no longer all reach goals: the puzzle is now unsolvable."


@dataclass(frozen=True)
class SokobanState:
    """Full, immutable episode state (what :meth:`SokobanEnv.snapshot` returns)."""

    room: Room
    player: Pos
    boxes: frozenset[Pos]
    deadlock: bool = False
    done: bool = False


class SokobanEnv:
    """Text Sokoban: ``reset(task)``, ``step(action_word)``, snapshots and expert solutions.

    Reward is 1.0 on the step that puts the last box on a goal, else 0.0. After a push that
    makes the room unsolvable (corner deadlock, or proven by a capped search; an undecided
    search counts as solvable) the episode ends with ``success=False`` when
    ``terminate_on_deadlock``. ``truncated`` is always False: budgets belong to the rollout.
    """

    action_words: tuple[str, ...] = ACTION_WORDS

    def __init__(self, terminate_on_deadlock: bool = True) -> None:
        self.terminate_on_deadlock = terminate_on_deadlock
        self._state: SokobanState | None = None

    def reset(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Start ``task``; returns the map and an info dict with the ``instruction``."""
        room = room_for(task)
        self._state = SokobanState(room=room, player=room.player, boxes=room.boxes)
        return self._render(), {"instruction": INSTRUCTION, **self._info()}

    def step(self, action: str) -> StepResult:
        """Apply one action word; the observation is one feedback line, then the map."""
        state = self._require_state()
        if state.done:
            raise RuntimeError("the episode has terminated; call reset() before stepping again")
        word = parse_action(action)
        if word is None:
            shown = " ".join(action.split())
            shown = shown if len(shown) <= 40 else shown[:40] + "..."
            feedback = f"Invalid action: '{shown}'. Valid actions: {', '.join(ACTION_WORDS)}."
            return f"{feedback}\n{self._render()}", 0.0, False, False, self._info(invalid_action=True)
        room, (row, col), (d_row, d_col) = state.room, state.player, MOVES[word]
        target, behind = (row + d_row, col + d_col), (row + 2 * d_row, col + 2 * d_col)
        if room.walls[target]:
            return self._answer("You walked into a wall; nothing changed.")
        if target not in state.boxes:
            self._state = replace(state, player=target)
            return self._answer(f"You moved {word}.", moved=True)
        if room.walls[behind] or behind in state.boxes:
            blocker = "a wall" if room.walls[behind] else "another box"
            return self._answer(f"The box can't move {word}: {blocker} is behind it; nothing changed.")
        boxes = (state.boxes - {target}) | {behind}
        if behind in room.goals:
            feedback = f"You pushed the box {word} onto a goal."
        elif target in room.goals:
            feedback = f"You pushed the box {word} off a goal."
        else:
            feedback = f"You pushed the box {word}."
        solved = boxes <= room.goals
        reason = "" if solved or state.deadlock else _unsolvable_reason(room, boxes, behind, target)
        if solved:
            feedback += " All boxes are on goals: the puzzle is solved!"
        elif reason:
            feedback += " " + reason
        deadlock = state.deadlock or bool(reason)
        done = solved or (deadlock and self.terminate_on_deadlock)
        self._state = SokobanState(room, target, boxes, deadlock=deadlock, done=done)
        return self._answer(feedback, moved=True, pushed=True, reward=1.0 if solved else 0.0)

    def snapshot(self) -> SokobanState:
        """The current state (immutable, so it is its own independent copy)."""
        return self._require_state()

    def restore(self, snapshot: SokobanState) -> None:
        """Return to ``snapshot``; can be called any number of times."""
        if not isinstance(snapshot, SokobanState):
            raise TypeError(f"expected a SokobanState from snapshot(), got {type(snapshot).__name__}")
        self._state = snapshot

    def diagnose(self, task: Task, actions: Sequence[str | None]) -> Diagnosis | None:
        """The first decisive mistake of an episode of ``task`` (see :mod:`leafe.envs.sokoban_diagnosis`)."""
        from leafe.envs.sokoban_diagnosis import diagnose

        return diagnose(task, actions)

    def expert_actions(self, task: Task) -> list[str]:
        """A shortest solution of ``task`` as action words."""
        actions = _solution(_params_key(task.params))
        if actions is None:
            raise ValueError(f"no solution found for task {task.task_id}")
        return list(actions)

    def _require_state(self) -> SokobanState:
        if self._state is None:
            raise RuntimeError("call reset(task) before step() or snapshot()")
        return self._state

    def _render(self) -> str:
        state = self._require_state()
        return render(state.room, state.player, state.boxes)

    def _answer(self, feedback: str, *, moved: bool = False, pushed: bool = False, reward: float = 0.0) -> StepResult:
        info = self._info(moved=moved, pushed=pushed)
        return f"{feedback}\n{self._render()}", reward, self._require_state().done, False, info

    def _info(self, *, invalid_action: bool = False, moved: bool = False, pushed: bool = False) -> dict[str, Any]:
        state = self._require_state()
        return {
            "success": state.boxes <= state.room.goals,
            "invalid_action": invalid_action,
            "moved": moved,
            "pushed": pushed,
            "deadlock": state.deadlock,
            "boxes_on_goals": len(state.boxes & state.room.goals),
            "num_boxes": len(state.boxes),
        }
