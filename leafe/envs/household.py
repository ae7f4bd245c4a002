"""Household tasks (an offline stand-in for ALFWorld) as a text environment.

Games are generated from seeds (:mod:`leafe.envs.household_scenes`), compiled once by TextWorld
and cached (:mod:`leafe.envs.household_games`), and played here on the Z-machine interpreter
that TextWorld uses (Jericho's Frotz), with TextWorld's logic tracking the state alongside:

    source = HouseholdTasks()
    env = HouseholdEnv()
    obs, info = env.reset(source.tasks("test", 10)[0])
    obs, reward, terminated, truncated, info = env.step("take apple from countertop")

Only *valid actions* reach the engine: the commands TextWorld's logic admits in the current state
(``take apple from countertop``, ``open fridge``, ``heat apple with microwave``, ...). A reply is
matched to one after normalising case, punctuation and articles, plus a few unambiguous
shorthands (``put apple in fridge`` -> ``insert apple into fridge``, ``take apple`` -> the one
``take apple from ...``). Anything else is answered with "That's not a valid action" and the list
of valid ones, and the state does not change. Sending free text to Inform 7 instead would let its
parser change the world in ways TextWorld's tracking cannot see (an implicit take, say), and the
valid-action list would drift from the real state.

Snapshots are the engine's true state: Frotz's memory, stack and RNG (``get_state``), plus a copy
of TextWorld's tracked game state. The interpreter's RNG is seeded with a constant, so episodes
are deterministic.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leafe.envs.base import Diagnosis, StepResult
from leafe.envs.household_games import ensure_game, require_textworld
from leafe.envs.household_scenes import HouseholdSpec, spec_for
from leafe.envs.text_commands import resolve_command
from leafe.types import Task

RULES = (
    "You are in a house and must complete a household task, one command per turn. Commands: "
    "take OBJECT from RECEPTACLE; open/close CONTAINER; insert OBJECT into CONTAINER; put OBJECT on "
    "SURFACE; heat OBJECT with microwave; cool OBJECT with fridge; clean OBJECT with sink basin; "
    "use LAMP; look; inventory; examine THING. Open a container before taking from or putting into it. "
    "Every observation lists the valid actions."
)
SUCCESS_TEXT = "Task complete!"

# Frotz's seed argument: jericho replaces a falsy seed (0) by -1, i.e. a time-based seed, so the
# constant must be non-zero for episodes to be reproducible.
_FROTZ_SEED = 20_240_601
_WON, _LOST = "*** The End ***", "*** You lost! ***"
_EVENT_TAG = re.compile(r"\[[^]]+\]\n?")  # Inform 7 action traces ("[taking the apple - succeeded]")
_PROMPT_LINE = re.compile(r"\n>[^\n]*\Z")  # the interpreter's prompt and status line
_SCORE_LINE = re.compile(r"Your score has just gone up by one point\.")
_ROOM_HEADER = re.compile(r"^-= .* =-$", re.MULTILINE)
_MAX_COMMAND_CHARS = 120  # jericho truncates commands beyond 198 bytes (with a warning)


@functools.lru_cache(maxsize=256)
def _load_game(story_file: str) -> tuple[Any, Any]:
    """(``textworld.Game``, ``Inform7Game``) of a compiled story file; cached (parsing takes ~40 ms).

    Both are only read while playing, so environments share them.
    """
    require_textworld()
    from textworld.generator.game import Game
    from textworld.generator.inform7 import Inform7Game

    game = Game.load(str(Path(story_file).with_suffix(".json")))
    return game, Inform7Game(game)


def _clean(raw: str) -> str:
    """Interpreter output without action traces, prompt, score messages or end-of-game banner."""
    text = _EVENT_TAG.sub("", raw)
    text = _PROMPT_LINE.sub("", text.rstrip())
    for marker in (_WON, _LOST):
        if marker in text:
            text = text[: text.index(marker)]
    text = _SCORE_LINE.sub("", text)
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _intro(raw: str) -> str:
    """The room description of the opening text (TextWorld's banner and objective dropped)."""
    text = _clean(raw)
    header = _ROOM_HEADER.search(text)
    return text[header.end() :].strip() if header else text


@dataclass(frozen=True)
class HouseholdSnapshot:
    """The full engine state (what :meth:`HouseholdEnv.snapshot` returns); treat as opaque.

    ``progression`` is TextWorld's tracked state; it is copied again on restore, so a snapshot can
    be restored any number of times.
    """

    story_file: str
    spec: HouseholdSpec
    frotz_state: tuple
    progression: Any
    done: bool
    won: bool


class HouseholdEnv:
    """Household tasks on TextWorld: ``reset(task)``, ``step(command)``, true-state snapshots.

    Reward is 1.0 on the step that completes the task, else 0.0; the episode then terminates with
    ``info["success"] = True``. No household task can be lost, so ``terminated`` means success.
    ``truncated`` is always False: budgets belong to the rollout.

    Args:
        show_valid_actions: end every observation with the list of valid actions (see
            :meth:`listed_actions`; the ``examine ...`` ones are summarised to keep prompts short).
            Invalid actions are always answered with the list.
    """

    def __init__(self, show_valid_actions: bool = True) -> None:
        require_textworld()
        self.show_valid_actions = show_valid_actions
        self._frotz: Any = None
        self._story_file: str | None = None
        self._progression: Any = None
        self._spec: HouseholdSpec | None = None
        self._done = False
        self._won = False

    def reset(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Start ``task`` (compiling its game on first use); returns the room and the goal."""
        from textworld.generator.game import GameProgression

        spec = spec_for(task)
        self._load(str(ensure_game(spec)))
        game, _ = _load_game(self._story_file)
        raw, _ = self._frotz.reset()
        self._frotz.step("tw-trace-actions")  # makes Inform 7 print the action traces tracked below
        self._progression = GameProgression(game, track_quests=True)
        self._spec, self._done, self._won = spec, False, False
        observation = f"{_intro(raw)}\n\nYour task is to: {spec.goal()}{self._valid_text()}"
        return observation, {"instruction": f"{RULES}\nYour task is to: {spec.goal()}", **self._info()}

    def step(self, action: str) -> StepResult:
        """Apply one command; the observation is the game's answer, then the valid actions."""
        if self._progression is None:
            raise RuntimeError("call reset(task) before step()")
        if self._done:
            raise RuntimeError("the episode has terminated; call reset() before stepping again")
        command = resolve_command(action, self.valid_actions())
        if command is None:
            shown = " ".join(action.split())
            shown = shown if len(shown) <= 60 else shown[:60] + "..."
            reason = self._refusal(action)
            reason = f" The game says: {reason}" if reason else ""
            observation = f"That's not a valid action: '{shown}'. Nothing happened.{reason}{self._valid_text(always=True)}"
            return observation, 0.0, False, False, self._info(invalid_action=True)
        raw, _, _, _ = self._frotz.step(command)
        tracked = self._track(raw)
        self._won, lost = _WON in raw, _LOST in raw
        self._done = self._won or lost
        feedback = _clean(raw) or "Nothing happened."
        if self._won:
            return f"{feedback}\n{SUCCESS_TEXT}", 1.0, True, False, self._info(command=command, tracked=tracked)
        observation = f"{feedback}{self._valid_text()}"
        return observation, 0.0, self._done, False, self._info(command=command, tracked=tracked)

    def valid_actions(self) -> list[str]:
        """The commands TextWorld's logic admits in the current state, sorted."""
        if self._progression is None:
            raise RuntimeError("call reset(task) before valid_actions()")
        _, inform7 = _load_game(self._story_file)
        return sorted(set(inform7.gen_commands_from_actions(self._progression.valid_actions)))

    def facts(self) -> set[tuple[str, tuple[str, ...]]]:
        """The tracked state as ``(predicate, entity names)``, e.g. ``("in", ("apple", "fridge"))``.

        The inventory and the player keep TextWorld's ids ``"I"`` and ``"P"``.
        """
        if self._progression is None:
            raise RuntimeError("call reset(task) before facts()")
        game, _ = _load_game(self._story_file)

        def name(variable: Any) -> str:
            info = game.infos.get(variable.name)
            return info.name if info is not None and info.name else variable.name

        return {(fact.name, tuple(name(v) for v in fact.arguments)) for fact in self._progression.state.facts}

    def diagnose(self, task: Task, actions: Sequence[str | None]) -> Diagnosis | None:
        """The first turn that did not bring the agent closer (see :mod:`leafe.envs.household_diagnosis`)."""
        from leafe.envs.household_diagnosis import diagnose

        return diagnose(task, actions)

    def snapshot(self) -> HouseholdSnapshot:
        """The current engine state (an independent copy)."""
        if self._progression is None:
            raise RuntimeError("call reset(task) before snapshot()")
        assert self._story_file is not None and self._spec is not None
        return HouseholdSnapshot(
            story_file=self._story_file,
            spec=self._spec,
            frotz_state=self._frotz.get_state(),
            progression=self._progression.copy(),
            done=self._done,
            won=self._won,
        )

    def restore(self, snapshot: HouseholdSnapshot) -> None:
        """Return to ``snapshot`` (taken from this or another HouseholdEnv); any number of times."""
        if not isinstance(snapshot, HouseholdSnapshot):
            raise TypeError(f"expected a HouseholdSnapshot from snapshot(), got {type(snapshot).__name__}")
        self._load(snapshot.story_file)
        self._frotz.set_state(snapshot.frotz_state)
        self._progression = snapshot.progression.copy()
        self._spec, self._done, self._won = snapshot.spec, snapshot.done, snapshot.won

    def expert_actions(self, task: Task) -> list[str]:
        """The walkthrough of ``task``: a shortest solution, built with the game."""
        return spec_for(task).walkthrough()

    def _load(self, story_file: str) -> None:
        """Point the interpreter at ``story_file`` (one Frotz instance per environment, reused)."""
        if story_file == self._story_file:
            return
        import jericho

        _load_game(story_file)
        with warnings.catch_warnings():
            # Jericho's own score/move detection only knows classic games; TextWorld's tracking
            # replaces it here, so its "not fully supported" warning is noise.
            warnings.simplefilter("ignore", jericho.UnsupportedGameWarning)
            if self._frotz is None:
                self._frotz = jericho.FrotzEnv(story_file, seed=_FROTZ_SEED)
            else:
                self._frotz.load(story_file, seed=_FROTZ_SEED)
        self._story_file = story_file

    def _track(self, raw: str) -> bool:
        """Update TextWorld's state from the action traces in ``raw``; True if an action was seen."""
        _, inform7 = _load_game(self._story_file)
        seen = False
        for tag in _EVENT_TAG.findall(raw):
            name = tag.strip()[1:-1]
            # Only finished top-level actions change the tracked state; "(1) taking ..." are
            # sub-actions of the one being traced (TextWorld's own wrapper skips them too).
            if " - succeeded" not in name or "(" in name or ")" in name:
                continue
            action = inform7.detect_action(name[: name.index(" - succeeded")], self._progression.valid_actions)
            if action is not None:
                self._progression.update(action)
                seen = True
        return seen

    def _refusal(self, action: str) -> str:
        """Inform 7's own answer to an invalid command ("The cabinet is closed."), or "".

        The command is tried on the interpreter and the interpreter's state is put back, so
        nothing changes. When Inform 7 would have carried it out (its parser is more lenient than
        TextWorld's logic), its answer would describe a change that did not happen: "" then.
        """
        command = " ".join(action.split())[:_MAX_COMMAND_CHARS]
        if not command or any(mark in command for mark in "[]"):
            return ""
        saved = self._frotz.get_state()
        try:
            raw, _, _, _ = self._frotz.step(command)
        finally:
            self._frotz.set_state(saved)
        if any(" - succeeded" in tag for tag in _EVENT_TAG.findall(raw)):
            return ""
        answer = " ".join(_clean(raw).split())
        return answer if len(answer) <= 200 else ""

    def listed_actions(self) -> list[str]:
        """The valid actions observations list by name: all but ``examine ...`` (summarised as
        "examine a thing"), with ``look`` and ``inventory`` last."""
        commands = self.valid_actions()
        main = [command for command in commands if not command.startswith("examine ") and command not in ("look", "inventory")]
        return main + ["look", "inventory"]

    def _valid_text(self, always: bool = False) -> str:
        if not (self.show_valid_actions or always):
            return ""
        return "\nValid actions: " + ", ".join(self.listed_actions()) + ", examine a thing."

    def _info(self, *, invalid_action: bool = False, command: str | None = None, tracked: bool = False) -> dict[str, Any]:
        assert self._spec is not None
        return {
            "success": self._won,
            "invalid_action": invalid_action,
            "command": command,
            "tracked": tracked,
            "task_type": self._spec.task_type,
        }
