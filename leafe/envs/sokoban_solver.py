"""Exact Sokoban search: a shortest-solution BFS and cheap deadlock tests.

A room is described by four plain values, the same everywhere in this module:

* ``walls``: a 2-D boolean numpy array, ``True`` where there is a wall. Cells outside the
  array count as walls, so hand-made rooms need no border.
* ``goals``: a frozenset of ``(row, col)`` goal cells.
* ``boxes``: a frozenset of ``(row, col)`` box cells.
* ``player``: the ``(row, col)`` cell of the player.

Row 0 is the top row and column 0 the left column; ``up`` decreases the row.

The search state is ``(player, boxes)``. Every edge is one player step (a walk or a push), so
breadth-first search returns a solution with the fewest steps. Boxes on *dead squares* (cells
from which a lone box can never be pushed onto a goal) are pruned, which keeps optimality.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np

Pos = tuple[int, int]

#: Action word -> (row delta, col delta), in the canonical action order.
MOVES: dict[str, Pos] = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}

DEFAULT_MAX_NODES = 200_000


class SearchLimitExceeded(Exception):
    """:func:`solve` visited ``max_nodes`` states without deciding: solvability is unknown."""


def _is_wall(walls: np.ndarray, pos: Pos) -> bool:
    """True when ``pos`` is a wall or lies outside the room."""
    row, col = pos
    height, width = walls.shape
    return not (0 <= row < height and 0 <= col < width) or bool(walls[row, col])


def is_corner_deadlock(walls: np.ndarray, goals: frozenset[Pos], box: Pos) -> bool:
    """True when ``box`` is off-goal with a wall on one vertical and one horizontal side.

    Such a box can never be pushed again, so the room is unsolvable.
    """
    if box in goals:
        return False
    row, col = box
    vertical = _is_wall(walls, (row - 1, col)) or _is_wall(walls, (row + 1, col))
    horizontal = _is_wall(walls, (row, col - 1)) or _is_wall(walls, (row, col + 1))
    return vertical and horizontal


class _Grid:
    """Cells encoded as ints on the room padded with one ring of walls (no bounds checks)."""

    def __init__(self, walls: np.ndarray) -> None:
        padded = np.pad(np.asarray(walls, dtype=bool), 1, constant_values=True)
        self.width = padded.shape[1]
        self.floor = frozenset(int(i) for i in np.flatnonzero(~padded))
        self.deltas = [dr * self.width + dc for dr, dc in MOVES.values()]

    def encode(self, pos: Pos) -> int:
        return (pos[0] + 1) * self.width + pos[1] + 1

    def decode(self, cell: int) -> Pos:
        row, col = divmod(cell, self.width)
        return row - 1, col - 1

    def live_cells(self, goals: Iterable[int]) -> set[int]:
        """Cells from which a lone box can reach a goal (found by pulling boxes off goals)."""
        live = set(goals)
        stack = list(live)
        while stack:
            cell = stack.pop()
            for delta in self.deltas:
                source, player = cell + delta, cell + 2 * delta
                if source in self.floor and player in self.floor and source not in live:
                    live.add(source)
                    stack.append(source)
        return live


def dead_squares(walls: np.ndarray, goals: frozenset[Pos]) -> frozenset[Pos]:
    """Floor cells from which a lone box can never be pushed onto any goal."""
    grid = _Grid(walls)
    live = grid.live_cells(grid.encode(goal) for goal in goals)
    return frozenset(grid.decode(cell) for cell in grid.floor - live)


def solve(
    walls: np.ndarray,
    goals: frozenset[Pos],
    boxes: frozenset[Pos],
    player: Pos,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> list[str] | None:
    """The shortest action list (in player steps) that puts every box on a goal.

    Returns ``[]`` when already solved and ``None`` when the room is provably unsolvable.
    Raises :class:`SearchLimitExceeded` when more than ``max_nodes`` distinct
    ``(player, boxes)`` states were reached before deciding.
    """
    grid = _Grid(walls)
    goal_cells = frozenset(grid.encode(goal) for goal in goals)
    box_cells = frozenset(grid.encode(box) for box in boxes)
    if box_cells <= goal_cells:
        return []
    pushable = grid.live_cells(goal_cells)
    if not box_cells <= pushable:
        return None
    floor, words = grid.floor, list(MOVES)
    start = (grid.encode(player), box_cells)
    parent: dict[tuple[int, frozenset[int]], tuple[tuple[int, frozenset[int]], int] | None]
    parent = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        here, current = state
        for action, delta in enumerate(grid.deltas):
            target = here + delta
            if target not in floor:
                continue
            pushed = target in current
            if pushed:
                landing = target + delta
                if landing in current or landing not in pushable:
                    continue
                following = (current - {target}) | {landing}
            else:
                following = current
            successor = (target, following)
            if successor in parent:
                continue
            parent[successor] = (state, action)
            if pushed and following <= goal_cells:
                return _path(parent, successor, words)
            if len(parent) > max_nodes:
                raise SearchLimitExceeded(f"no decision within {max_nodes} states")
            queue.append(successor)
    return None


def _path(parent: dict, state: tuple[int, frozenset[int]], words: list[str]) -> list[str]:
    """Follow ``parent`` links back from ``state`` to the start; returns action words."""
    actions = []
    link = parent[state]
    while link is not None:
        state, action = link
        actions.append(words[action])
        link = parent[state]
    return actions[::-1]
