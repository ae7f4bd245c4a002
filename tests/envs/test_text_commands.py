"""Matching replies to valid commands: exact forms, shorthands, and refusing the ambiguous."""

import pytest

from leafe.envs.text_commands import normalize_command, resolve_command

HOUSEHOLD = ["take apple from countertop", "insert apple into fridge", "put apple on dining table", "heat apple with microwave", "open fridge", "look"]
ALFWORLD = ["go to cabinet 1", "go to cabinet 2", "go to fridge 1", "take mug 1 from cabinet 1", "move mug 1 to countertop 1"]


def test_normalize_drops_case_articles_and_outer_punctuation():
    assert normalize_command("  Take THE apple,  from a countertop. ") == "take apple from countertop"


@pytest.mark.parametrize(
    "reply, command",
    [
        ("take apple from countertop", "take apple from countertop"),
        ("Take the apple.", "take apple from countertop"),
        ("put the apple in the fridge", "insert apple into fridge"),
        ("place apple onto dining table", "put apple on dining table"),
        ("heat apple", "heat apple with microwave"),
        ("'open fridge'", "open fridge"),
        ("go to fridge", "go to fridge 1"),
        ("take mug from cabinet", "take mug 1 from cabinet 1"),
        ("put mug in countertop", "move mug 1 to countertop 1"),
        ("take the apple from countertop, look, inventory, examine a thing.", "take apple from countertop"),
    ],
)
def test_resolves_exact_forms_and_unambiguous_shorthands(reply, command):
    assert resolve_command(reply, HOUSEHOLD + ALFWORLD) == command


@pytest.mark.parametrize("reply", ["go to cabinet", "take banana", "put apple in oven", "open", "", "heat", "look around, take apple"])
def test_refuses_unknown_or_ambiguous_replies(reply):
    assert resolve_command(reply, HOUSEHOLD + ALFWORLD) is None
