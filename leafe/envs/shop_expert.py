"""Expert demonstrations and episode diagnosis for the embedded shop.

:func:`plan_from` gives a shortest action sequence from any shop state to a purchase scoring 1:
from the search page it searches (the goal's attributes, product type and option values, or
shorter queries when those find nothing fitting), pages to the first fitting product, opens it,
chooses the asked option values and buys. From a results or item page it continues with what is
on screen when that can still reach a score of 1, and goes back otherwise.

:func:`diagnose` (the ``env`` reflector's verdict) replays an episode and returns the first turn
whose action did not shorten that plan, with the reason and the plan's next action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from leafe.envs.base import Diagnosis
from leafe.envs.shop_catalog import Catalog, Goal, Product
from leafe.envs.shop_pages import BACK_TO_SEARCH, BUY_NOW, NEXT_PAGE, PREV_PAGE, page_count
from leafe.envs.shop_reward import attributes_matched, fuzzy_match, normalize_color, purchase_reward

if TYPE_CHECKING:
    from leafe.envs.shop import ShopEnv, ShopState
    from leafe.types import Task


def fitting_values(product: Product, goal: Goal) -> dict[str, str] | None:
    """Option name -> the offered value matching each goal option, or ``None`` when the product
    cannot score 1 whatever is chosen."""
    chosen: dict[str, str] = {}
    for _, wanted in goal.options:
        offered = [
            (name, value) for name, values in product.options for value in values
            if fuzzy_match(normalize_color(value), normalize_color(wanted))
        ]
        if not offered:
            return None
        chosen[offered[0][0]] = offered[0][1]
    return chosen


def fits(catalog: Catalog, product: Product, goal: Goal) -> bool:
    """True when buying ``product`` with the right options scores 1."""
    chosen = fitting_values(product, goal)
    target = catalog.by_asin[goal.asin]
    return chosen is not None and purchase_reward(product.rewarded(), goal.rewarded(target), chosen).success


def shortfall(catalog: Catalog, product: Product, goal: Goal) -> str:
    """Why ``product`` cannot score 1, in words (``""`` when it can)."""
    target = catalog.by_asin[goal.asin]
    full = {name: values[0] for name, values in product.options}
    parts = []
    if product.kind.query != target.kind.query:
        parts.append(f"it is not a {target.kind.phrase}")
    reward = purchase_reward(product.rewarded(), goal.rewarded(target), full)
    missing = [wanted for wanted in goal.attributes if not attributes_matched(product.rewarded(), [wanted])]
    if missing:
        parts.append(f"it is not {' and '.join(missing)}")
    if fitting_values(product, goal) is None:
        parts.append("it does not offer the asked options")
    if not reward.price_ok:
        parts.append(f"its price ${product.price:.2f} is above the limit")
    return ", ".join(parts)


def _queries(catalog: Catalog, goal: Goal) -> list[str]:
    target = catalog.by_asin[goal.asin]
    wanted = f"{' '.join(goal.attributes)} {target.kind.phrase}"
    return [f"{wanted} {' '.join(value for _, value in goal.options)}", wanted, target.title.lower()]


def _buy(catalog: Catalog, goal: Goal, asin: str, chosen: dict[str, str]) -> list[str]:
    """Choose the fitting values not chosen yet, then buy."""
    needed = fitting_values(catalog.by_asin[asin], goal) or {}
    return [f"click[{value}]" for name, value in needed.items() if chosen.get(name) != value] + [f"click[{BUY_NOW}]"]


def _from_results(catalog: Catalog, goal: Goal, query: str, page_number: int, page_size: int) -> list[str] | None:
    """From results page ``page_number`` of ``query``: page to the nearest fitting product, open it, buy."""
    found = catalog.search(query)
    best: list[str] | None = None
    for index, asin in enumerate(found):
        if not fits(catalog, catalog.by_asin[asin], goal):
            continue
        target_page = index // page_size + 1
        moves = [f"click[{NEXT_PAGE if target_page > page_number else PREV_PAGE}]"] * abs(target_page - page_number)
        plan = moves + [f"click[{asin.lower()}]"] + _buy(catalog, goal, asin, {})
        if best is None or len(plan) < len(best):
            best = plan
    return best


def expert_plan(catalog: Catalog, goal: Goal, page_size: int = 10) -> list[str]:
    """A shortest demonstration from the search page (searches that fit on page 1 are preferred)."""
    plans = []
    for query in _queries(catalog, goal):
        rest = _from_results(catalog, goal, query, 1, page_size)
        if rest is not None:
            plans.append([f"search[{query}]"] + rest)
    if not plans:
        raise RuntimeError(f"no search finds a product fitting goal {goal.instruction!r}")
    return min(plans, key=len)


def plan_from(catalog: Catalog, goal: Goal, state: ShopState, page_size: int = 10) -> list[str] | None:
    """A shortest plan from ``state`` to a purchase scoring 1; ``None`` after a purchase."""
    restart = [f"click[{BACK_TO_SEARCH}]"] + expert_plan(catalog, goal, page_size)
    if state.kind == "done":
        return None
    if state.kind == "search":
        return restart[1:]
    if state.kind == "results":
        pages = page_count(len(catalog.search(state.query)), page_size)
        here = _from_results(catalog, goal, state.query, min(state.page_number, pages), page_size)
        return here if here is not None and len(here) <= len(restart) else restart
    if state.kind == "detail":
        return [f"click[{PREV_PAGE}]"] + (plan_from(catalog, goal, replace(state, kind="item", detail=""), page_size) or [])
    product = catalog.by_asin[state.asin]
    if fits(catalog, product, goal):
        return _buy(catalog, goal, state.asin, dict(state.chosen))
    back = plan_from(catalog, goal, replace(state, kind="results", asin="", chosen=()), page_size) or restart
    return [f"click[{PREV_PAGE}]"] + back if len(back) < len(restart) else restart


def diagnose(env: ShopEnv, task: Task, actions: Sequence[str | None]) -> Diagnosis | None:
    """The first turn of an episode of ``task`` that did not bring a purchase scoring 1 closer.

    ``actions`` has one entry per turn (``None``: a reply without an action). ``env`` is used to
    replay the episode. Returns ``None`` when the episode scored 1 or every turn made progress.
    """
    env.reset(task)
    snapshot = env.snapshot()
    catalog, goal = snapshot.catalog, snapshot.goal
    for turn, action in enumerate(actions, start=1):
        state = env.snapshot().state
        before = plan_from(catalog, goal, state, env.page_size)
        if not before:
            return None
        if action is None:
            return Diagnosis(turn, f"Turn {turn} had no 'Action:' line, so nothing happened. Instead: {before[0]}.")
        _, reward, terminated, _, info = env.step(action)
        if info["success"]:
            return None
        after_state = env.snapshot().state
        if info["invalid_action"]:
            return Diagnosis(turn, f"Turn {turn}: '{action}' was not a valid action here. Instead: {before[0]}.")
        if terminated:
            why = shortfall(catalog, catalog.by_asin[after_state.asin], goal) or "the chosen options do not match the instruction"
            return Diagnosis(turn, f"Turn {turn}: buying scored {reward:.2f} because {why}. Instead: {before[0]}.")
        after = plan_from(catalog, goal, after_state, env.page_size) or []
        if len(after) >= len(before):
            why = ""
            if after_state.kind == "item" and state.kind == "results":
                why = f" ({shortfall(catalog, catalog.by_asin[after_state.asin], goal)})"
            elif after_state.kind == "results" and state.kind == "search":
                why = " (no product on its results fits the instruction)"
            return Diagnosis(turn, f"Turn {turn}: '{action}' did not bring you closer to a fitting purchase{why}. Instead: {before[0]}.")
    return None
