"""Shortest plans from any household state, and what went wrong in an episode (``env`` reflector).

:func:`plan_from` reads TextWorld's tracked facts (where the target is, which containers are
closed, whether it is hot/cold/clean, whether the lamp is on) and returns a shortest command
sequence that completes the task from there. The domain has no dead ends, and each needed step
(open where the target is, take it, treat it, open the destination, place it / switch on the
lamp) is needed exactly once, so the plan is optimal; from the start state it equals
:meth:`HouseholdSpec.walkthrough` (tested).

:func:`diagnose` replays an episode and returns the first turn that did not bring the agent
closer to the goal: a reply without an action, an invalid action, or a valid action that left
the shortest plan as long as before (a detour, a look around, undoing progress). Nothing in a
household game is irreversible, so that turn is where a better action was available; the
summary names it (the next step of the shortest plan).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from leafe.envs.base import Diagnosis
from leafe.envs.household_scenes import OPENABLE_KINDS, HouseholdSpec, spec_for
from leafe.types import Task

Fact = tuple[str, tuple[str, ...]]  # ("in", ("apple", "fridge")); the inventory is "I"

_TREATMENT = {
    "pick_heat_then_place_in_recep": ("hot", "heat"),
    "pick_cool_then_place_in_recep": ("cold", "cool"),
    "pick_clean_then_place_in_recep": ("clean", "clean"),
}


def _location(spec: HouseholdSpec, facts: set[Fact]) -> str | None:
    """Where the target is: a receptacle name, "I" (held), or None (on the floor)."""
    for name, arguments in facts:
        if name in ("in", "on") and arguments[0] == spec.target:
            return arguments[1]
    return None


def _closed(facts: set[Fact], receptacle: str) -> bool:
    return ("closed", (receptacle,)) in facts


def plan_from(spec: HouseholdSpec, facts: Iterable[Fact]) -> list[str]:
    """A shortest command sequence completing ``spec``'s task from the state ``facts``."""
    facts = set(facts)
    where = _location(spec, facts)
    treatment = _TREATMENT.get(spec.task_type)
    treated = treatment is None or (treatment[0], (spec.target,)) in facts
    if spec.task_type == "look_at_obj_in_light":
        lamp_on = ("lamp_on", (spec.lamp,)) in facts
        placed = where == "I" and lamp_on
    else:
        placed = where == spec.destination and treated
    if placed:
        return []
    plan: list[str] = []
    if where != "I":
        if where is None:
            plan.append(f"take {spec.target}")
        else:
            if _closed(facts, where):
                plan.append(f"open {where}")
            plan.append(f"take {spec.target} from {where}")
    if treatment is not None and not treated:
        appliance = spec.appliance()
        assert appliance is not None
        plan.append(f"{treatment[1]} {spec.target} with {appliance.name}")
    if spec.task_type == "look_at_obj_in_light":
        if ("lamp_on", (spec.lamp,)) not in facts:
            plan.append(f"use {spec.lamp}")
        return plan
    assert spec.destination is not None
    destination = spec.receptacle(spec.destination)
    if _closed(facts, destination.name) and not (plan and plan[0] == f"open {destination.name}"):
        plan.append(f"open {destination.name}")
    verb = f"insert {spec.target} into" if destination.kind in OPENABLE_KINDS else f"put {spec.target} on"
    plan.append(f"{verb} {destination.name}")
    return plan


def diagnose(task: Task, actions: Sequence[str | None]) -> Diagnosis | None:
    """The first turn of an episode of ``task`` that did not bring the agent closer to the goal.

    ``actions`` has one entry per turn, ``None`` for a reply without an action. Returns ``None``
    when the episode solved the task or every turn made progress.
    """
    from leafe.envs.household import HouseholdEnv

    spec = spec_for(task)
    env = HouseholdEnv()
    env.reset(task)
    for turn, action in enumerate(actions, start=1):
        before = plan_from(spec, env.facts())
        if not before:
            return None
        goal = f"the task is to {spec.goal()[:-1]}"
        if action is None:
            return Diagnosis(turn, f"Turn {turn} had no 'Action:' line, so nothing happened ({goal}). Instead: {before[0]}.")
        _, _, terminated, _, info = env.step(action)
        if info["success"]:
            return None
        after = plan_from(spec, env.facts())
        if info["invalid_action"]:
            summary = f"Turn {turn}: '{action}' was not a valid action ({goal}). Instead: {before[0]}."
            return Diagnosis(turn, summary)
        if len(after) >= len(before):
            summary = f"Turn {turn}: '{info['command']}' did not bring you closer to the goal ({goal}). Instead: {before[0]}."
            return Diagnosis(turn, summary)
        if terminated:
            return None
    return None
