"""Household task specifications in the style of ALFWorld, and the task source that splits them.

A task is one room (kitchen, bathroom, bedroom or living room) with a few receptacles, a few
portable objects and one goal of an ALFWorld task type:

* ``pick_and_place_simple``: put the X in/on the Y;
* ``pick_heat_then_place_in_recep``: heat the X with the microwave, then put it in/on the Y;
* ``pick_cool_then_place_in_recep``: cool the X with the fridge, then put it in/on the Y;
* ``pick_clean_then_place_in_recep``: clean the X with the sink basin, then put it in/on the Y;
* ``look_at_obj_in_light``: hold the X and switch on the lamp.

(ALFWorld's sixth type, ``pick_two_obj_and_place``, needs two objects with the same name, which
TextWorld's parser cannot tell apart; it is not generated.) Unlike ALFWorld there is no
``go to`` step: everything in the room is within reach.

This module is pure Python (no TextWorld): a :class:`HouseholdSpec` is drawn from a seed, and its
goal text and expert walkthrough are derived from it. :mod:`leafe.envs.household_games` turns a
spec into a playable TextWorld game. Because specs are cheap, :class:`HouseholdTasks` can split
and deduplicate tasks without compiling any game.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from leafe.types import Task

TASK_TYPES: tuple[str, ...] = (
    "pick_and_place_simple",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_clean_then_place_in_recep",
    "look_at_obj_in_light",
)

# Receptacle kinds. The appliance kinds are receptacles too (TextWorld types in household.twl).
CONTAINER, SUPPORTER = "container", "supporter"
FRIDGE, MICROWAVE, SINK = "fridge", "microwave", "sink"
OPENABLE_KINDS = frozenset({CONTAINER, FRIDGE, MICROWAVE})

# Which appliance a task type needs, and the verb of its command ("heat X with microwave").
_APPLIANCE = {
    "pick_heat_then_place_in_recep": (MICROWAVE, "heat"),
    "pick_cool_then_place_in_recep": (FRIDGE, "cool"),
    "pick_clean_then_place_in_recep": (SINK, "clean"),
}
# The object affordance a task type needs (pick_and_place_simple needs none).
_AFFORDANCE = {
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_clean_then_place_in_recep": "clean",
    "look_at_obj_in_light": "light",
}


@dataclass(frozen=True)
class RoomKind:
    """A room type: its receptacles (name, kind), its lamp, and its objects with affordances."""

    name: str
    receptacles: tuple[tuple[str, str], ...]
    lamp: str | None
    objects: tuple[tuple[str, frozenset[str]], ...]


def _objects(table: dict[str, str]) -> tuple[tuple[str, frozenset[str]], ...]:
    return tuple((name, frozenset(flags.split())) for name, flags in table.items())


# Object affordances follow ALFWorld's task definitions loosely (what can be heated, cooled,
# cleaned or looked at). Names within a room share no word, so TextWorld's parser never has to
# ask "which do you mean".
ROOMS: tuple[RoomKind, ...] = (
    RoomKind(
        name="kitchen",
        receptacles=(
            ("fridge", FRIDGE), ("microwave", MICROWAVE), ("sink basin", SINK), ("countertop", SUPPORTER),
            ("dining table", SUPPORTER), ("cabinet", CONTAINER), ("drawer", CONTAINER), ("shelf", SUPPORTER),
            ("stove burner", SUPPORTER), ("garbage can", CONTAINER),
        ),
        lamp=None,
        objects=_objects({
            "apple": "heat cool clean", "tomato": "heat cool clean", "potato": "heat cool clean",
            "egg": "heat cool", "bread": "heat cool", "lettuce": "cool clean", "mug": "heat cool clean",
            "cup": "heat cool clean", "bowl": "heat cool clean", "plate": "heat cool clean", "pan": "cool clean",
            "pot": "cool clean", "knife": "clean", "fork": "clean", "spoon": "clean", "spatula": "clean",
            "wine bottle": "cool", "kettle": "clean",
        }),
    ),
    RoomKind(
        name="bathroom",
        receptacles=(
            ("sink basin", SINK), ("countertop", SUPPORTER), ("cabinet", CONTAINER), ("drawer", CONTAINER),
            ("shelf", SUPPORTER), ("toilet", SUPPORTER), ("bathtub", SUPPORTER), ("garbage can", CONTAINER),
            ("laundry basket", CONTAINER),
        ),
        lamp=None,
        objects=_objects({
            "soap bar": "clean", "cloth": "clean", "dish sponge": "clean", "hand towel": "clean",
            "candle": "", "spray bottle": "", "tissue box": "", "plunger": "",
            "scrub brush": "",
        }),
    ),
    RoomKind(
        name="bedroom",
        receptacles=(
            ("bed", SUPPORTER), ("desk", SUPPORTER), ("drawer", CONTAINER), ("dresser", SUPPORTER),
            ("shelf", SUPPORTER), ("side table", SUPPORTER), ("garbage can", CONTAINER), ("safe", CONTAINER),
            ("laundry hamper", CONTAINER),
        ),
        lamp="desklamp",
        objects=_objects({
            "book": "light", "pen": "light", "pencil": "light", "cellphone": "light", "alarm clock": "light",
            "pillow": "light", "laptop": "light", "credit card": "light", "keychain": "light",
            "baseball bat": "", "tennis racket": "",
        }),
    ),
    RoomKind(
        name="living room",
        receptacles=(
            ("sofa", SUPPORTER), ("coffee table", SUPPORTER), ("ottoman", SUPPORTER), ("tv stand", SUPPORTER),
            ("cabinet", CONTAINER), ("drawer", CONTAINER), ("armchair", SUPPORTER), ("shelf", SUPPORTER),
            ("garbage can", CONTAINER),
        ),
        lamp="floorlamp",
        objects=_objects({
            "remote control": "light", "newspaper": "light", "vase": "light", "statue": "light",
            "watch": "light", "box": "light", "credit card": "light", "keychain": "light", "pillow": "light",
            "laptop": "light", "plate": "",
        }),
    ),
)
_ROOMS_BY_NAME = {room.name: room for room in ROOMS}


@dataclass(frozen=True)
class Receptacle:
    """A place objects can be in or on. ``kind`` is one of container/supporter/fridge/microwave/sink."""

    name: str
    kind: str
    closed: bool

    @property
    def preposition(self) -> str:
        """``"in"`` for containers (fridge, microwave, drawer...), ``"on"`` for surfaces."""
        return "in" if self.kind in OPENABLE_KINDS else "on"


@dataclass(frozen=True)
class HouseholdSpec:
    """Everything that defines one household game.

    Attributes:
        room: the room kind's name.
        task_type: one of :data:`TASK_TYPES`.
        target: the object the task is about.
        destination: where it must end up (``None`` for ``look_at_obj_in_light``).
        lamp: the room's lamp, if any.
        receptacles: every receptacle in the room, in description order.
        placements: (object, receptacle) for every portable object, the target first.
    """

    room: str
    task_type: str
    target: str
    destination: str | None
    lamp: str | None
    receptacles: tuple[Receptacle, ...]
    placements: tuple[tuple[str, str], ...]

    def receptacle(self, name: str) -> Receptacle:
        """The receptacle called ``name``."""
        return next(item for item in self.receptacles if item.name == name)

    def appliance(self) -> Receptacle | None:
        """The appliance the task needs (microwave, fridge or sink basin), if any."""
        kind = _APPLIANCE.get(self.task_type, (None, ""))[0]
        return next((item for item in self.receptacles if item.kind == kind), None) if kind else None

    def goal(self) -> str:
        """The goal in ALFWorld's wording, e.g. ``"heat the apple and put it on the dining table."``."""
        if self.task_type == "look_at_obj_in_light":
            return f"look at the {self.target} under the {self.lamp}."
        assert self.destination is not None
        where = f"{self.receptacle(self.destination).preposition} the {self.destination}"
        verb = _APPLIANCE.get(self.task_type, (None, ""))[1]
        return f"{verb} the {self.target} and put it {where}." if verb else f"put the {self.target} {where}."

    def walkthrough(self) -> list[str]:
        """A shortest command sequence that solves the task (checked against the engine in tests)."""
        source = self.receptacle(dict(self.placements)[self.target])
        commands: list[str] = []
        if source.closed:
            commands.append(f"open {source.name}")
        commands.append(f"take {self.target} from {source.name}")
        appliance = self.appliance()
        if appliance is not None:
            commands.append(f"{_APPLIANCE[self.task_type][1]} {self.target} with {appliance.name}")
        if self.task_type == "look_at_obj_in_light":
            commands.append(f"use {self.lamp}")
            return commands
        assert self.destination is not None
        destination = self.receptacle(self.destination)
        if destination.closed and destination.name != source.name:
            commands.append(f"open {destination.name}")
        if destination.kind in OPENABLE_KINDS:
            commands.append(f"insert {self.target} into {destination.name}")
        else:
            commands.append(f"put {self.target} on {destination.name}")
        return commands

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal strings iff equal specs."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class SceneSettings:
    """How big and which kinds of games to draw (the ``env`` config fields that shape a game)."""

    task_types: tuple[str, ...] = TASK_TYPES
    num_receptacles: int = 4
    num_distractors: int = 2
    closed_containers: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.task_types) - set(TASK_TYPES))
        if unknown or not self.task_types:
            raise ValueError(f"task_types must be a non-empty subset of {list(TASK_TYPES)}; got {list(self.task_types)}")
        if not 2 <= self.num_receptacles <= 8:
            raise ValueError(f"num_receptacles must be in 2..8, got {self.num_receptacles}")
        if not 0 <= self.num_distractors <= 6:
            raise ValueError(f"num_distractors must be in 0..6, got {self.num_distractors}")

    def params(self, seed: int) -> dict[str, Any]:
        """The task params of ``seed`` under these settings (JSON-serialisable)."""
        return {"seed": seed, **asdict(self), "task_types": list(self.task_types)}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SceneSettings:
        """Inverse of :meth:`params` (the seed is ignored)."""
        try:
            return cls(
                task_types=tuple(params["task_types"]),
                num_receptacles=int(params["num_receptacles"]),
                num_distractors=int(params["num_distractors"]),
                closed_containers=bool(params["closed_containers"]),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"household task params need seed and the scene settings; got {params}") from error


def _rooms_for(task_type: str) -> list[RoomKind]:
    if task_type == "look_at_obj_in_light":
        return [room for room in ROOMS if room.lamp]
    kind = _APPLIANCE.get(task_type, (None, ""))[0]
    return [room for room in ROOMS if kind is None or any(k == kind for _, k in room.receptacles)]


def make_spec(seed: int, settings: SceneSettings) -> HouseholdSpec:
    """The household game of ``seed`` (deterministic in any process: ``random.Random`` of a string)."""
    rng = random.Random(f"household:{seed}")
    task_type = rng.choice(sorted(settings.task_types))
    room = rng.choice(_rooms_for(task_type))
    affordance = _AFFORDANCE.get(task_type)
    candidates = [name for name, flags in room.objects if affordance is None or affordance in flags]
    target = rng.choice(candidates)

    appliance_kind = _APPLIANCE.get(task_type, (None, ""))[0]
    required = [(name, kind) for name, kind in room.receptacles if kind == appliance_kind]
    others = [item for item in room.receptacles if item not in required]
    chosen = required + rng.sample(others, min(len(others), settings.num_receptacles - len(required)))
    rng.shuffle(chosen)
    receptacles = tuple(
        Receptacle(name, kind, closed=settings.closed_containers and kind in OPENABLE_KINDS) for name, kind in chosen
    )

    # The appliance of the task is never the destination: "cool the apple and put it in the
    # fridge" would be solved by the placing alone in ALFWorld's sense of the goal.
    destinations = [item.name for item in receptacles if item.kind != appliance_kind]
    destination = None if task_type == "look_at_obj_in_light" else rng.choice(destinations)
    sources = [item.name for item in receptacles if item.name != destination]
    placements = [(target, rng.choice(sources))]
    distractors = [name for name, _ in room.objects if name != target]
    for name in rng.sample(distractors, min(len(distractors), settings.num_distractors)):
        placements.append((name, rng.choice(receptacles).name))
    return HouseholdSpec(
        room=room.name,
        task_type=task_type,
        target=target,
        destination=destination,
        lamp=room.lamp,
        receptacles=receptacles,
        placements=tuple(placements),
    )


def spec_for(task: Task) -> HouseholdSpec:
    """The spec of a household ``task`` (regenerated from its params)."""
    try:
        seed = int(task.params["seed"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"household task {task.task_id}: params need an integer seed; got {task.params}") from error
    return make_spec(seed, SceneSettings.from_params(task.params))


def room_kind(name: str) -> RoomKind:
    """The :class:`RoomKind` called ``name``."""
    return _ROOMS_BY_NAME[name]


_MAX_SCAN_WITHOUT_TASK = 2_000  # stream seeds scanned in a row without a new task of the split


class HouseholdTasks:
    """Generated household tasks; train and test are disjoint by construction.

    Seeds 0, 1, 2, ... are walked. A spec goes to ``"test"`` when a hash of its canonical JSON,
    mapped to [0, 1), is below ``test_fraction``, else to ``"train"``; a spec equal to one already
    kept is skipped, so a game never appears twice or in both splits. Task ``i`` of a split is
    the ``i``-th kept spec of that split. No game is compiled here (see ``household_games``).

    The source is infinite, so ``tasks(split)`` needs an explicit ``count``.
    """

    def __init__(self, settings: SceneSettings | None = None, test_fraction: float = 0.2) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.settings = settings or SceneSettings()
        self.test_fraction = test_fraction
        self._kept: dict[str, list[int]] = {"train": [], "test": []}
        self._seen: set[str] = set()
        self._next_seed = 0

    def split_of(self, spec: HouseholdSpec) -> str:
        """``"test"`` or ``"train"``: the split a spec belongs to."""
        value = int.from_bytes(hashlib.sha256(spec.to_json().encode()).digest()[:8], "big") / 2**64
        return "test" if value < self.test_fraction else "train"

    def tasks(self, split: str, count: int | None = None) -> list[Task]:
        """The first ``count`` tasks of ``split`` (``"train"`` or ``"test"``), in a fixed order."""
        if split not in self._kept:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        if count is None:
            raise ValueError("HouseholdTasks is an infinite source: pass count")
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        kept, scanned = self._kept[split], 0
        while len(kept) < count:
            if scanned == _MAX_SCAN_WITHOUT_TASK:
                raise RuntimeError(f"no new {split} task in {scanned} seeds in a row; allow more task types or receptacles")
            spec = make_spec(self._next_seed, self.settings)
            key = spec.to_json()
            if key in self._seen:
                scanned += 1
            else:
                self._seen.add(key)
                landed = self.split_of(spec)
                self._kept[landed].append(self._next_seed)
                scanned = 0 if landed == split else scanned + 1
            self._next_seed += 1
        return [self._task(split, index, seed) for index, seed in enumerate(kept[:count])]

    def _task(self, split: str, index: int, seed: int) -> Task:
        return Task(task_id=f"household/{split}/{index:04d}", split=split, params=self.settings.params(seed))


def task_type_counts(tasks: Sequence[Task]) -> dict[str, int]:
    """How many of ``tasks`` there are of each task type (for reports)."""
    counts: dict[str, int] = {}
    for task in tasks:
        kind = spec_for(task).task_type
        counts[kind] = counts.get(kind, 0) + 1
    return counts
