"""Matching a model's reply to one of the commands a text game admits right now.

Text games built on TextWorld (the household games, ALFWorld) know the exact commands that are
valid in the current state. A reply matches one after normalising case, outer punctuation,
articles and whitespace, or through a few shorthands that name exactly one valid command:

* ``put/place/insert/move X in/into/on/onto/to Y`` -> ``insert X into Y``, ``put X on Y`` or
  ALFWorld's ``move X to Y``;
* ``take/get/grab/pick up X`` -> the one ``take X from ...``;
* ``heat/cool/clean/wash X`` -> the one ``heat X with ...`` (etc.).

A reply listing several commands ("take apple from countertop, look") counts as its first one:
tiny models often copy a stretch of the valid-action list.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_ARTICLES = frozenset({"the", "a", "an", "some"})
_NUMBER = re.compile(r" \d+\b")  # ALFWorld's instance numbers: "apple 1"
_STRIP = string.whitespace + string.punctuation + "\u201c\u201d\u2018\u2019"


def normalize_command(text: str) -> str:
    """Lower case, outer punctuation stripped, articles dropped, whitespace collapsed."""
    words = text.lower().strip(_STRIP).replace(",", " ").split()
    return " ".join(word for word in words if word not in _ARTICLES)


def resolve_command(text: str, valid: Sequence[str]) -> str | None:
    """The valid command ``text`` means, or ``None``.

    Exact matches (after :func:`normalize_command`) first, then the shorthands of the module
    docstring. Instance numbers (ALFWorld's ``apple 1``) may be left out when only one command
    fits: ``go to fridge`` -> ``go to fridge 1``.
    """
    exact = {normalize_command(command): command for command in valid}
    wanted = normalize_command(text)
    if wanted in exact:
        return exact[wanted]
    if "," in text:  # a reply that copies part of the valid-action list: its first command counts
        return resolve_command(text.split(",", 1)[0], valid)
    loose: dict[str, list[str]] = {}  # forms without instance numbers -> commands
    for form, command in exact.items():
        loose.setdefault(_NUMBER.sub("", form), []).append(command)
    by_form = {form: commands[0] for form, commands in loose.items() if len(commands) == 1}
    by_form.update(exact)
    if wanted in by_form:
        return by_form[wanted]
    placing = re.fullmatch(r"(?:put|place|insert|move) (.+?) (?:in|into|inside|on|onto|in to|on to|to) (.+)", wanted)
    if placing:
        item, where = placing.groups()
        for form in (f"insert {item} into {where}", f"put {item} on {where}", f"move {item} to {where}"):
            if form in by_form:
                return by_form[form]
        return None
    prefixes = []
    taking = re.fullmatch(r"(?:take|get|grab|pick up) (.+)", wanted)
    if taking and " from " not in wanted:
        prefixes.append(f"take {taking.group(1)} from ")
    treating = re.fullmatch(r"(heat|cool|clean|wash) (.+)", wanted)
    if treating and " with " not in wanted:
        verb = "clean" if treating.group(1) == "wash" else treating.group(1)
        prefixes.append(f"{verb} {treating.group(2)} with ")
    matches = {command for form, command in by_form.items() for prefix in prefixes if form.startswith(prefix)}
    return matches.pop() if len(matches) == 1 else None
