"""The Sokoban BFS solver and deadlock checks, on hand-made rooms."""

from __future__ import annotations

import numpy as np
import pytest

from leafe.envs.sokoban_solver import MOVES, SearchLimitExceeded, dead_squares, is_corner_deadlock, solve


def parse(text: str) -> tuple[np.ndarray, frozenset, frozenset, tuple[int, int]]:
    """(walls, goals, boxes, player) from a map in the env's legend (# _ O X V P S)."""
    rows = text.strip().splitlines()
    cells = {(r, c): ch for r, row in enumerate(rows) for c, ch in enumerate(row)}
    walls = np.array([[ch == "#" for ch in row] for row in rows])
    goals = frozenset(pos for pos, ch in cells.items() if ch in "OVS")
    boxes = frozenset(pos for pos, ch in cells.items() if ch in "XV")
    (player,) = [pos for pos, ch in cells.items() if ch in "PS"]
    return walls, goals, boxes, player


def replay(walls: np.ndarray, boxes: frozenset, player: tuple[int, int], actions: list[str]) -> frozenset:
    """Independent rule check: apply ``actions`` and return the final boxes (fails on illegal moves)."""
    for action in actions:
        d_row, d_col = MOVES[action]
        target = (player[0] + d_row, player[1] + d_col)
        assert not walls[target], f"walked into a wall with {action}"
        if target in boxes:
            behind = (target[0] + d_row, target[1] + d_col)
            assert not walls[behind] and behind not in boxes, f"blocked push {action}"
            boxes = (boxes - {target}) | {behind}
        player = target
    return boxes


DETOUR = """
#######
#_____#
#__XPO#
#_____#
#######
"""


def test_shortest_solution_of_a_room_that_needs_a_detour():
    walls, goals, boxes, player = parse(DETOUR)
    actions = solve(walls, goals, boxes, player)
    # Walk around the box (4 steps: the box blocks the direct way), then push it right twice.
    assert actions is not None and len(actions) == 6
    assert actions[-2:] == ["right", "right"]
    assert replay(walls, boxes, player, actions) <= goals


def test_straight_push_and_already_solved():
    walls, goals, boxes, player = parse("#######\n#PX__O#\n#######")
    assert solve(walls, goals, boxes, player) == ["right"] * 3
    assert solve(walls, goals, goals, player) == []


def test_two_boxes_shortest_solution():
    walls, goals, boxes, player = parse("######\n#PX_O#\n#_X_O#\n######")
    actions = solve(walls, goals, boxes, player)
    # Push the top box home (2), walk round to the bottom box's left (3), push it home (2);
    # every other order needs 8 steps.
    assert actions == ["right", "right", "left", "left", "down", "right", "right"]
    assert replay(walls, boxes, player, actions) <= goals


def test_unsolvable_rooms_return_none():
    corner = "#####\n#X__#\n#__P#\n#__O#\n#####"
    assert solve(*parse(corner)) is None
    # Player walled into its own cell: the box is pushable in principle, but never reached.
    isolated = """
#######
#P#___#
###_X_#
#__O__#
#######
"""
    assert solve(*parse(isolated)) is None
    # Corridor: after one push the two boxes touch and the player is stuck behind them.
    corridor = "#########\n#PX_X_OO#\n#########"
    assert solve(*parse(corridor)) is None


def test_search_limit_is_distinguishable_from_unsolvable():
    walls, goals, boxes, player = parse(DETOUR)
    with pytest.raises(SearchLimitExceeded):
        solve(walls, goals, boxes, player, max_nodes=3)


def test_corner_deadlock():
    walls, goals, _, _ = parse("#####\n#___#\n#_P_#\n#__O#\n#####")
    assert is_corner_deadlock(walls, goals, (1, 1))
    assert is_corner_deadlock(walls, goals, (1, 3))
    assert not is_corner_deadlock(walls, goals, (3, 3))  # a corner, but a goal
    assert not is_corner_deadlock(walls, goals, (1, 2))  # against one wall only
    assert not is_corner_deadlock(walls, goals, (2, 2))
    # Outside the array counts as wall.
    assert is_corner_deadlock(np.zeros((2, 2), dtype=bool), frozenset(), (0, 0))


def test_dead_squares_in_a_closed_three_by_three_room():
    walls, goals, _, _ = parse("#####\n#___#\n#_O_#\n#_P_#\n#####")
    # No box can be pushed into the centre: the player can never stand behind it.
    floor = {(r, c) for r in range(1, 4) for c in range(1, 4)}
    assert dead_squares(walls, goals) == floor - {(2, 2)}
    walls, goals, _, _ = parse("#######\n#P___O#\n#######")
    assert dead_squares(walls, goals) == {(1, 1)}
