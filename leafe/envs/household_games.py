"""Household specs -> TextWorld games, compiled offline and cached on disk.

A :class:`~leafe.envs.household_scenes.HouseholdSpec` becomes a TextWorld game with
``textworld.GameMaker`` and is compiled by TextWorld's bundled Inform 7 compiler into a Z-machine
story file (``.z8``) plus TextWorld's ``.json`` game description (logic, facts, quest). Both land
in ``<cache root>/household/<digest>.{z8,json}``; the cache root is ``$LEAFE_CACHE`` or
``~/.cache/leafe`` (as for the embedded model). The digest covers the spec, the TextWorld version
and the logic/grammar files, so a change to any of them compiles new games instead of reusing
stale ones. Compiling takes ~0.5 s per game; a per-game ``fcntl`` lock and an atomic rename keep
concurrent processes from compiling the same game twice or reading half-written files.

The game logic is TextWorld's built-in logic (rooms, containers, supporters, inventory) minus
food, plus ``household_data/logic/household.twl``: heat with a microwave, cool with a fridge,
clean with a sink, switch on a lamp. Text comes from the plain ``household`` grammar theme in
``household_data/text_grammars`` ("There is a closed fridge here.").
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from leafe.envs.household_scenes import CONTAINER, FRIDGE, MICROWAVE, OPENABLE_KINDS, SINK, SUPPORTER, HouseholdSpec
from leafe.policy.embedded import cache_root, file_lock

DATA_DIR = Path(__file__).resolve().parent / "household_data"
GENERATOR_VERSION = 1  # bump when build_game changes what a spec compiles to

_TEXTWORLD_TYPE = {CONTAINER: "c", SUPPORTER: "s", FRIDGE: "fridge", MICROWAVE: "microwave", SINK: "sink"}
# Descriptions shown by "examine"; the Inform 7 substitutions show the state the task cares about.
_OBJECT_DESCRIPTION = (
    "It's a {name}.[if the item described is hot] It is hot.[end if][if the item described is cold] It is cold."
    "[end if][if the item described is clean] It is clean.[otherwise] It is not clean.[end if]"
)
_LAMP_DESCRIPTION = "It's a {name}. [if the item described is glowing]It is switched on.[otherwise]It is switched off.[end if]"
_RECEPTACLE_DESCRIPTION = "It's a {name}."


def require_textworld() -> Any:
    """The ``textworld`` module, or an ImportError that says how to install it."""
    try:
        import textworld
    except ImportError as error:
        raise ImportError(
            "env.name=household needs TextWorld: pip install 'leafe[household]' (or pip install textworld)"
        ) from error
    return textworld


@functools.cache
def knowledge_base() -> Any:
    """TextWorld's built-in logic without food, plus the household appliances, and our grammar."""
    require_textworld()
    from textworld.generator.data import LOGIC_DATA_PATH, KnowledgeBase
    from textworld.logic import GameLogic

    # food.twl adds "eat", which ALFWorld has no counterpart for and which would destroy objects.
    builtin = sorted(path for path in glob.glob(os.path.join(LOGIC_DATA_PATH, "*.twl")) if not path.endswith("food.twl"))
    ours = sorted(glob.glob(str(DATA_DIR / "logic" / "*.twl")))
    return KnowledgeBase(GameLogic.load(builtin + ours), str(DATA_DIR / "text_grammars"))


@functools.cache
def _data_digest() -> str:
    """Hash of TextWorld's version and our logic and grammar files (part of every game's digest)."""
    textworld = require_textworld()
    digest = hashlib.sha256(f"textworld {textworld.__version__} generator {GENERATOR_VERSION}".encode())
    for path in sorted(DATA_DIR.rglob("*.tw[lg]")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def game_digest(spec: HouseholdSpec) -> str:
    """Cache key of the compiled game of ``spec``."""
    return hashlib.sha256((_data_digest() + spec.to_json()).encode()).hexdigest()[:24]


def games_dir() -> Path:
    """Where compiled household games are cached."""
    return cache_root() / "household"


def _quest_facts(spec: HouseholdSpec, maker: Any, entities: dict[str, Any]) -> list[Any]:
    """The facts that must all hold for the task to be solved."""
    target = entities[spec.target]
    if spec.task_type == "look_at_obj_in_light":
        return [maker.new_fact("in", target, maker.inventory), maker.new_fact("lamp_on", entities[spec.lamp])]
    assert spec.destination is not None
    destination = spec.receptacle(spec.destination)
    relation = "in" if destination.kind in OPENABLE_KINDS else "on"
    facts = [maker.new_fact(relation, target, entities[destination.name])]
    state = {
        "pick_heat_then_place_in_recep": "hot",
        "pick_cool_then_place_in_recep": "cold",
        "pick_clean_then_place_in_recep": "clean",
    }.get(spec.task_type)
    if state is not None:
        facts.append(maker.new_fact(state, target))
    return facts


def build_game(spec: HouseholdSpec) -> Any:
    """The ``textworld.Game`` of ``spec`` (not compiled)."""
    textworld = require_textworld()
    from textworld.generator.game import Event, GameOptions, Quest

    options = GameOptions()
    options.kb = knowledge_base()
    options.grammar.theme = "household"
    options.seeds = 0  # the grammar draws nothing we rely on; fixed anyway so builds are repeatable
    maker = textworld.GameMaker(options)
    room = maker.new_room(spec.room)
    maker.set_player(room)
    entities: dict[str, Any] = {}
    for receptacle in spec.receptacles:
        entity = maker.new(
            type=_TEXTWORLD_TYPE[receptacle.kind],
            name=receptacle.name,
            desc=_RECEPTACLE_DESCRIPTION.format(name=receptacle.name),
        )
        if receptacle.kind in OPENABLE_KINDS:
            entity.add_property("closed" if receptacle.closed else "open")
        room.add(entity)
        entities[receptacle.name] = entity
    if spec.lamp is not None:
        lamp = maker.new(type="lamp", name=spec.lamp, desc=_LAMP_DESCRIPTION.format(name=spec.lamp))
        lamp.add_property("lamp_off")
        room.add(lamp)
        entities[spec.lamp] = lamp
    for name, where in spec.placements:
        item = maker.new(type="o", name=name, desc=_OBJECT_DESCRIPTION.format(name=name))
        item.add_property("lukewarm")
        item.add_property("dirty")
        entities[where].add(item)
        entities[name] = item
    maker.quests = [Quest(win_events=[Event(conditions=set(_quest_facts(spec, maker, entities)))])]
    game = maker.build()
    game.objective = f"Your task is to: {spec.goal()}"
    game.metadata = {"walkthrough": spec.walkthrough(), "task_type": spec.task_type, "leafe_spec": spec.to_json()}
    return game


def compile_spec(spec: HouseholdSpec, story_file: Path) -> None:
    """Compile the game of ``spec`` into ``story_file`` (``.z8``) and its ``.json`` sibling."""
    require_textworld()
    from textworld.generator import compile_game
    from textworld.generator.game import GameOptions

    options = GameOptions()
    options.path = str(story_file)
    options.force_recompile = True
    compile_game(build_game(spec), options)


def ensure_game(spec: HouseholdSpec) -> Path:
    """The cached story file of ``spec``, compiling it first if needed. Safe across processes."""
    folder = games_dir()
    story = folder / f"{game_digest(spec)}.z8"
    if story.is_file():
        return story
    with file_lock(folder / f".{story.stem}.lock"):
        if story.is_file():  # another process compiled it while we waited
            return story
        staging = Path(tempfile.mkdtemp(prefix=".compile-", dir=folder))
        try:
            compile_spec(spec, staging / story.name)
            # The .json must be in place before the .z8, whose existence marks a finished game.
            os.replace(staging / f"{story.stem}.json", folder / f"{story.stem}.json")
            os.replace(staging / story.name, story)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return story
