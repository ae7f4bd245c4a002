"""Shop pages as compact text, and WebShop's action syntax.

Both shops (the embedded one, :mod:`leafe.envs.shop`, and the WebShop client,
:mod:`leafe.envs.webshop`) describe what the agent sees as a :class:`Page` and render it here, so
a model trained on one reads the other. WebShop's page flow:

    search page --search[keywords]--> results (10 a page; next > / < prev / back to search)
      --click[asin]--> item page (options, description, features, buy now)
      --click[buy now]--> done (the score)

Pages are rendered much shorter than WebShop's ``[SEP]``-joined page text (a 135M model with a
2k-token context reads them): one line per result, options on one line each, and the buttons
last. Actions are WebShop's: ``search[keywords]`` (on the search page only) and
``click[button]``, where a button is a product id, an option value or a button name, compared
without case, extra spaces or the ``<``/``>`` arrows (``click[next]`` is ``click[next >]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

BACK_TO_SEARCH, NEXT_PAGE, PREV_PAGE, BUY_NOW = "back to search", "next >", "< prev", "buy now"
DESCRIPTION, FEATURES = "description", "features"
# The rules every prompt states (both shops).
RULES = (
    "You are shopping online for the product the instruction describes, one action per turn. On the search "
    "page write search[keywords]; everywhere else write click[button], where a button is a product id "
    "(click[b0abc12345]), an option value (click[large]) or one of: next >, < prev, back to search, "
    "description, features, buy now. Choose every option the instruction asks for, then click[buy now]. "
    "The score is 1 when the product has the asked attributes, options and price."
)
_ACTION = re.compile(r"^\s*(search|click)\s*\[(.*?)\]", re.IGNORECASE)
_UNCLOSED = re.compile(r"^\s*(search|click)\s*\[([^\]]*?)[\s.!]*$", re.IGNORECASE)


@dataclass(frozen=True)
class Page:
    """What one page shows.

    Attributes:
        kind: ``"search"``, ``"results"``, ``"item"``, ``"detail"`` (description or features)
            or ``"done"``.
        instruction: the goal (shown on the search page only; prompts carry it anyway).
        query, page_number, total: the search and which results page this is (results).
        results: (asin, title, price text) of the products on this results page.
        asin, title, price: the product (item, detail, done).
        options: (option name, offered values) of the product (item).
        chosen: option name -> chosen value so far (item, done).
        detail: which detail page (``"description"``/``"features"``) and its text lines (detail).
        score, score_note: the purchase's reward and how it came about (done).
        buttons: the named buttons of the page, in display order.
    """

    kind: str
    instruction: str = ""
    query: str = ""
    page_number: int = 0
    total: int = 0
    results: tuple[tuple[str, str, str], ...] = ()
    asin: str = ""
    title: str = ""
    price: str = ""
    options: tuple[tuple[str, tuple[str, ...]], ...] = ()
    chosen: dict[str, str] = field(default_factory=dict)
    detail: tuple[str, tuple[str, ...]] = ("", ())
    score: float | None = None
    score_note: str = ""
    buttons: tuple[str, ...] = ()

    def clickables(self) -> list[str]:
        """Everything ``click[...]`` accepts here: buttons, product ids, option values (lower case)."""
        names = [button.lower() for button in self.buttons]
        names += [asin.lower() for asin, _, _ in self.results]
        names += [value.lower() for _, values in self.options for value in values]
        return names


def page_count(total: int, page_size: int) -> int:
    """Results pages for ``total`` results (at least 1)."""
    return max(1, -(-total // page_size))


def render(page: Page, page_size: int = 10) -> str:
    """The page as the agent reads it."""
    buttons = f"Buttons: {', '.join(page.buttons)}" if page.buttons else ""
    if page.kind == "search":
        return f"[Search page] Instruction: {page.instruction}\nType search[keywords] to search the shop."
    if page.kind == "results":
        head = f'[Results for "{page.query}"] page {page.page_number} of {page_count(page.total, page_size)} ({page.total} results)'
        if not page.results:
            head += "\nNo products match: click[back to search], then search with fewer or other words."
        lines = [f"[{asin}] {title} {price}" for asin, title, price in page.results]
        return "\n".join([head, *lines, buttons])
    if page.kind == "item":
        lines = [f"[Item {page.asin}] {page.title}", f"Price: {page.price}"]
        for name, values in page.options:
            chosen = page.chosen.get(name)
            lines.append(f"{name}: {', '.join(values)}" + (f" (chosen: {chosen})" if chosen else ""))
        return "\n".join([*lines, buttons])
    if page.kind == "detail":
        which, text = page.detail
        return "\n".join([f"[{which.capitalize()} of {page.asin}]", *text, buttons])
    if page.kind == "done":
        options = ", ".join(f"{name} {value}" for name, value in page.chosen.items()) or "no options chosen"
        named = f" ({page.title})" if page.title else ""
        priced = f" for {page.price}" if page.price else ""
        bought = f"[Done] You bought {page.asin}{named} with {options}{priced}."
        return f"{bought}\nYour score (min 0.0, max 1.0): {page.score:.2f}{page.score_note}"
    raise ValueError(f"unknown page kind {page.kind!r}")


def parse_action(text: str) -> tuple[str, str] | None:
    """``("search", keywords)`` or ``("click", target)`` from WebShop's syntax, else ``None``.

    The argument runs to the first ``]`` of the line; text after it is ignored (WebShop's parser
    ignores it too, but reads to the last ``]``): ``click[a] click[b]`` -> ``("click", "a")``,
    ``search[red mug] now`` -> ``("search", "red mug")``. A missing ``]`` is tolerated
    (``click[buy now`` -> ``("click", "buy now")``). ``target`` is lower-cased, spaces collapsed.
    """
    line = text.strip().splitlines()[0] if text.strip() else ""
    match = _ACTION.match(line) or _UNCLOSED.match(line)
    if match is None:
        return None
    verb, argument = match.group(1).lower(), " ".join(match.group(2).split())
    return (verb, argument if verb == "search" else argument.lower()) if argument else None


def _loose(name: str) -> str:
    return " ".join(name.replace("<", " ").replace(">", " ").split())


def resolve_click(target: str, page: Page) -> str | None:
    """The clickable ``target`` names on ``page`` (see :meth:`Page.clickables`), or ``None``.

    A product's exact title also names it on a results page.
    """
    clickables = page.clickables()
    if target in clickables:
        return target
    loose = {_loose(name): name for name in clickables}
    if _loose(target) in loose:
        return loose[_loose(target)]
    by_title = [asin.lower() for asin, title, _ in page.results if title.lower() == target]
    return by_title[0] if len(by_title) == 1 else None


def invalid_feedback(action: str, page: Page) -> str:
    """Why ``action`` did nothing on ``page``, and what would work there."""
    shown = " ".join(action.split())
    shown = shown if len(shown) <= 80 else shown[:80] + "..."
    clickables = page.clickables()
    options = f"Clickable: {', '.join(clickables)}." if clickables else "Nothing is clickable here: type search[keywords]."
    parsed = parse_action(action)
    if parsed is None:
        reason = f"'{shown}' is not an action: write search[keywords] on the search page, or click[button]."
    elif parsed[0] == "search":
        reason = f"{shown} does nothing here: search works on the search page only (click[{BACK_TO_SEARCH}] first)."
    else:
        reason = f"{shown} is not a clickable button here."
    return f"Invalid action: {reason} {options}"
