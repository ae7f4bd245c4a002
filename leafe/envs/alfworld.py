"""ALFWorld's own household games (Shridhar et al., 2021), when the user has them.

ALFWorld ships its games separately (``alfworld-download`` fills ``$ALFWORLD_DATA``); this
adapter reads them where ALFWorld puts them::

    $ALFWORLD_DATA/json_2.1.1/{train,valid_seen,valid_unseen}/<task>/<trial>/
        game.tw-pddl     the game: PDDL domain + problem, text grammar, "solvable", "walkthrough"
        traj_data.json   the ALFRED trajectory it came from ("task_type", "pddl_params", "plan")

Games are found and filtered exactly as ALFWorld's ``AlfredTWEnv.collect_game_files`` does:
trials with "movable" or "Sliced" in their path are skipped, as are other task types and games
not marked solvable. Split ``train`` is ALFWorld's ``train``; split ``test`` is ``valid_unseen``
(ALFWorld's out-of-distribution evaluation set, the default) or ``valid_seen``. The two are
different folders of different trials, so they never share a task.

Playing needs the ``alfworld`` package (its name demangler: ``apple 1``) and TextWorld's PDDL
engine (``fast-downward-textworld``, installed with alfworld). The expert demonstration is the
game file's ``walkthrough`` (written by ``alfworld-generate``) or, when absent, ALFWorld's planner
expert (TextWorld's ``policy_commands``, a Fast Downward plan). There is no snapshot: rollback
uses reset + replay, exact because the PDDL engine is deterministic (``check_env`` verifies it).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leafe.envs.base import StepResult
from leafe.envs.text_commands import resolve_command
from leafe.types import Task

ALFWORLD_TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
TEST_SPLITS = ("valid_unseen", "valid_seen")
DATA_VARIABLE = "ALFWORLD_DATA"
RULES = (
    "You are in a house and must complete a household task, one command per turn: go to a "
    "receptacle, open/close it, take an object from it, move an object to it, heat/cool/clean an "
    "object with the microwave/fridge/sink basin, use a lamp, look, inventory, examine. "
    "Every observation lists the valid actions."
)
_WELCOME = "-= Welcome to TextWorld, ALFRED! =-"


class AlfworldDataError(FileNotFoundError):
    """ALFWorld's game files are missing or unusable; the message names the setting or file."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir``, else ``$ALFWORLD_DATA``, checked to hold ALFWorld's ``json_2.1.1`` folder."""
    raw = data_dir or os.environ.get(DATA_VARIABLE)
    if not raw:
        raise AlfworldDataError(
            f"env.data_dir: not set and ${DATA_VARIABLE} is empty; point either at the folder "
            "alfworld-download filled (it contains json_2.1.1/)"
        )
    root = Path(raw).expanduser()
    source = "env.data_dir" if data_dir else f"${DATA_VARIABLE}"
    if not (root / "json_2.1.1").is_dir():
        raise AlfworldDataError(f"{source}: {root / 'json_2.1.1'} does not exist (run alfworld-download, or fix the path)")
    return root


@dataclass(frozen=True)
class AlfworldGame:
    """One ALFWorld trial: its game file (relative to the data dir) and task type."""

    game_file: str
    task_type: str


@functools.lru_cache(maxsize=16)
def discover_games(root: Path, alfworld_split: str, task_types: tuple[str, ...]) -> tuple[AlfworldGame, ...]:
    """The playable games of one ALFWorld split, sorted by path (filters as ALFWorld's own).

    Raises:
        AlfworldDataError: the split folder is missing, a ``traj_data.json`` is unreadable, or no
            game is left after filtering.
    """
    folder = root / "json_2.1.1" / alfworld_split
    if not folder.is_dir():
        raise AlfworldDataError(f"{folder} does not exist: the ALFWorld data has no {alfworld_split!r} split")
    games = []
    for traj_file in sorted(folder.rglob("traj_data.json")):
        trial = traj_file.parent
        relative = trial.relative_to(root)
        if "movable" in str(relative) or "Sliced" in str(relative):
            continue  # ALFWorld's TextWorld engine does not support these trials
        task_type = _read_json(traj_file).get("task_type")
        game_file = trial / "game.tw-pddl"
        if task_type not in task_types or not game_file.is_file():
            continue
        if _read_json(game_file).get("solvable") is not True:
            continue
        games.append(AlfworldGame(game_file=str(relative / "game.tw-pddl"), task_type=task_type))
    if not games:
        raise AlfworldDataError(f"no solvable game of task types {list(task_types)} under {folder}")
    return tuple(games)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AlfworldDataError(f"{path}: cannot read it as JSON ({error})") from None
    if not isinstance(data, dict):
        raise AlfworldDataError(f"{path}: expected a JSON object")
    return data


class AlfworldTasks:
    """ALFWorld's games as a task source: ``train`` and ``test`` (= ``test_split``)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        test_split: str = "valid_unseen",
        task_types: Sequence[str] = ALFWORLD_TASK_TYPES,
    ) -> None:
        if test_split not in TEST_SPLITS:
            raise ValueError(f"test_split must be one of {list(TEST_SPLITS)}, got {test_split!r}")
        unknown = sorted(set(task_types) - set(ALFWORLD_TASK_TYPES))
        if unknown or not task_types:
            raise ValueError(f"task_types must be a non-empty subset of {list(ALFWORLD_TASK_TYPES)}; got {list(task_types)}")
        self.data_dir = resolve_data_dir(data_dir)
        self.splits = {"train": "train", "test": test_split}
        self.task_types = tuple(task_types)

    def tasks(self, split: str, count: int | None = None) -> list[Task]:
        """The first ``count`` games (all when ``None``) of ``split``, sorted by path."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        games = discover_games(self.data_dir, self.splits[split], self.task_types)
        if count is not None and count > len(games):
            raise ValueError(f"only {len(games)} {split} games ({self.splits[split]}) of the chosen task types")
        chosen = games if count is None else games[:count]
        return [
            Task(
                task_id=f"alfworld/{split}/{index:04d}",
                split=split,
                params={"game_file": game.game_file, "task_type": game.task_type},
            )
            for index, game in enumerate(chosen)
        ]


def require_alfworld() -> Any:
    """ALFWorld's TextWorld wrappers, or an ImportError that says how to install them."""
    try:
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
    except ImportError as error:
        raise ImportError("env.name=alfworld needs the alfworld package: pip install 'leafe[alfworld]'") from error
    return AlfredDemangler, AlfredInfos


class AlfworldEnv:
    """An ALFWorld game on TextWorld's PDDL engine, behind leafe's environment contract.

    Reward 1.0 on the step that completes the task, which also terminates the episode
    (``info["success"]``). Invalid actions leave the state unchanged and list the valid ones.

    Args:
        data_dir: ALFWorld's data folder (tasks store game files relative to it).
        show_valid_actions: end every observation with the valid actions.
    """

    def __init__(self, data_dir: str | os.PathLike[str], show_valid_actions: bool = True) -> None:
        require_alfworld()
        self.data_dir = Path(data_dir)
        self.show_valid_actions = show_valid_actions
        self._games: dict[str, Any] = {}  # game file -> loaded TextWorld environment
        self._game: Any = None
        self._state: Any = None
        self._task_type = ""
        self._done = False

    def reset(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Start ``task``; returns the room and the goal."""
        self._game = self._environment(self._game_file(task), policy=False)
        self._state = self._game.reset()
        self._task_type, self._done = str(task.params.get("task_type", "")), False
        intro = self._state.feedback.replace(_WELCOME, "").strip()
        goal = next((line for line in intro.splitlines() if line.startswith("Your task is to:")), "")
        return f"{intro}{self._valid_text()}", {"instruction": f"{RULES}\n{goal}".strip(), **self._info()}

    def step(self, action: str) -> StepResult:
        """Apply one command (matched to a valid one, see :mod:`leafe.envs.text_commands`)."""
        if self._state is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            raise RuntimeError("the episode has terminated; call reset() before stepping again")
        command = resolve_command(action, self._state["admissible_commands"])
        if command is None:
            shown = " ".join(action.split())
            shown = shown if len(shown) <= 60 else shown[:60] + "..."
            observation = f"That's not a valid action: '{shown}'. Nothing happened.{self._valid_text(always=True)}"
            return observation, 0.0, False, False, self._info(invalid_action=True)
        self._state, _, _ = self._game.step(command)
        won = bool(self._state["won"])
        self._done = won
        observation = self._state.feedback.strip()
        observation = f"{observation}\nTask complete!" if won else f"{observation}{self._valid_text()}"
        return observation, 1.0 if won else 0.0, won, False, self._info(command=command)

    def expert_actions(self, task: Task) -> list[str]:
        """The game file's walkthrough, else ALFWorld's planner expert from the start state."""
        path = self._game_file(task)
        walkthrough = json.loads(path.read_text(encoding="utf-8")).get("walkthrough")
        if walkthrough:
            return [str(command) for command in walkthrough]
        planner = self._environment(path, policy=True)
        return list(planner.reset()["policy_commands"])

    def _game_file(self, task: Task) -> Path:
        try:
            path = self.data_dir / str(task.params["game_file"])
        except KeyError:
            raise ValueError(f"alfworld task {task.task_id}: params need 'game_file'; got {task.params}") from None
        if not path.is_file():
            raise AlfworldDataError(f"{path} does not exist (task {task.task_id}; is the data dir the same as when the task was made?)")
        return path

    def _environment(self, path: Path, policy: bool) -> Any:
        """A loaded TextWorld environment for ``path`` (cached per game; the planner one apart,
        because asking for ``policy_commands`` makes every step run the planner)."""
        key = f"{path}|{policy}"
        if key not in self._games:
            import textworld

            demangler, infos = require_alfworld()
            request = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=policy)
            self._games[key] = textworld.start(str(path), request_infos=request, wrappers=[demangler(shuffle=False), infos])
        return self._games[key]

    def _valid_text(self, always: bool = False) -> str:
        if not (self.show_valid_actions or always):
            return ""
        commands = [c for c in self._state["admissible_commands"] if not c.startswith("examine ") and c != "help"]
        return "\nValid actions: " + ", ".join(commands) + ", examine a thing."

    def _info(self, *, invalid_action: bool = False, command: str | None = None) -> dict[str, Any]:
        return {
            "success": bool(self._state["won"]) if self._state is not None else False,
            "invalid_action": invalid_action,
            "command": command,
            "task_type": self._task_type,
        }
