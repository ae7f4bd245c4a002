"""The embedded shop: a WebShop stand-in on a generated catalogue, as a text environment.

    source = ShopTasks(seed=0, num_products=3000)
    env = ShopEnv()
    obs, info = env.reset(source.tasks("test", 10)[0])
    obs, reward, terminated, truncated, info = env.step("search[cotton men's t-shirt]")
    obs, reward, terminated, truncated, info = env.step("click[b0fzhp1ba7]")

The page flow, actions and reward are WebShop's (:mod:`leafe.envs.shop_pages`,
:mod:`leafe.envs.shop_reward`): buying ends the episode with the partial-credit score as reward;
``info["success"]`` is a score of 1. ``truncated`` is always False: budgets belong to the
rollout. The state is a small frozen value (:class:`ShopState`), so snapshots are exact and free.

Departures from WebShop, for a small model's sake: search works on the search page only (as the
paper's action table says; WebShop's text env accepts it anywhere), results pages show ``next >``
only when there is a next page, there is no Reviews page (WebShop's are empty), and the done page
says which parts of the score were met (WebShop keeps that in a hidden element).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from leafe.envs.base import Diagnosis, StepResult
from leafe.envs.shop_catalog import Catalog, Goal, goal_of
from leafe.envs.shop_pages import (
    BACK_TO_SEARCH, BUY_NOW, DESCRIPTION, FEATURES, NEXT_PAGE, PREV_PAGE, RULES, Page, invalid_feedback,
    page_count, parse_action, render, resolve_click,
)
from leafe.envs.shop_reward import RewardBreakdown, purchase_reward
from leafe.types import Task



@dataclass(frozen=True)
class ShopState:
    """Where the agent is: the page and what it needs to draw it (what snapshots hold).

    ``chosen`` keeps (option name, value) pairs in the order first chosen; ``bought`` is the
    purchase's score breakdown once ``buy now`` was clicked.
    """

    kind: str = "search"
    query: str = ""
    page_number: int = 1
    asin: str = ""
    chosen: tuple[tuple[str, str], ...] = ()
    detail: str = ""
    bought: RewardBreakdown | None = None


@dataclass(frozen=True)
class ShopSnapshot:
    """What :meth:`ShopEnv.snapshot` returns; treat as opaque."""

    catalog: Catalog
    goal: Goal
    state: ShopState


def choose(chosen: tuple[tuple[str, str], ...], name: str, value: str) -> tuple[tuple[str, str], ...]:
    """``chosen`` with option ``name`` set to ``value`` (replacing an earlier choice)."""
    if any(existing == name for existing, _ in chosen):
        return tuple((existing, value if existing == name else old) for existing, old in chosen)
    return (*chosen, (name, value))


def score_note(bought: RewardBreakdown) -> str:
    """Which parts of the score were met, for the done page."""
    kind = "right product type" if bought.r_type == 1.0 else f"wrong product type (score x{bought.r_type})"
    price = "price within the limit" if bought.price_ok else "price above the limit"
    return (
        f" (attributes {bought.attributes_matched}/{bought.attributes_total}, options "
        f"{bought.options_matched}/{bought.options_total}, {price}, {kind})"
    )


class ShopEnv:
    """The embedded shop: ``reset(task)``, ``step(action)``, exact snapshots, expert demos.

    Args:
        page_size: products per results page (WebShop: 10).
    """

    def __init__(self, page_size: int = 10) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self._catalog: Catalog | None = None
        self._goal: Goal | None = None
        self._state = ShopState()

    def reset(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Start ``task`` on the search page; ``info["instruction"]`` has the rules and the goal."""
        self._catalog, self._goal = goal_of(task)
        self._state = ShopState()
        instruction = f"{RULES}\nInstruction: {self._goal.instruction}"
        return render(self.page(), self.page_size), {"instruction": instruction, **self._info()}

    def step(self, action: str) -> StepResult:
        """Apply one ``search[...]``/``click[...]``; an invalid one changes nothing and says why."""
        if self._goal is None:
            raise RuntimeError("call reset(task) before step()")
        if self._state.bought is not None:
            raise RuntimeError("the episode has terminated; call reset() before stepping again")
        page = self.page()
        following = self._follow(action, page)
        if following is None:
            return invalid_feedback(action, page), 0.0, False, False, self._info(invalid_action=True)
        self._state = following
        observation = render(self.page(), self.page_size)
        if following.bought is not None:
            return observation, following.bought.reward, True, False, self._info()
        return observation, 0.0, False, False, self._info()

    def page(self) -> Page:
        """The current page."""
        assert self._catalog is not None and self._goal is not None, "call reset(task) first"
        state, catalog = self._state, self._catalog
        if state.kind == "search":
            return Page("search", instruction=self._goal.instruction)
        if state.kind == "results":
            found = catalog.search(state.query)
            start = (state.page_number - 1) * self.page_size
            shown = [catalog.by_asin[asin] for asin in found[start : start + self.page_size]]
            buttons = [BACK_TO_SEARCH] + [PREV_PAGE] * (state.page_number > 1)
            buttons += [NEXT_PAGE] * (state.page_number < page_count(len(found), self.page_size))
            return Page(
                "results", query=state.query, page_number=state.page_number, total=len(found),
                results=tuple((p.asin, p.title, f"${p.price:.2f}") for p in shown), buttons=tuple(buttons),
            )
        product = catalog.by_asin[state.asin]
        common = {"asin": product.asin, "title": product.title, "price": f"${product.price:.2f}", "chosen": dict(state.chosen)}
        if state.kind == "item":
            buttons = (BACK_TO_SEARCH, PREV_PAGE, DESCRIPTION, FEATURES, BUY_NOW)
            return Page("item", options=product.options, buttons=buttons, **common)
        if state.kind == "detail":
            text = (product.description,) if state.detail == DESCRIPTION else product.features
            return Page("detail", detail=(state.detail, text), buttons=(BACK_TO_SEARCH, PREV_PAGE), **common)
        assert state.bought is not None
        return Page("done", score=state.bought.reward, score_note=score_note(state.bought), **common)

    def _follow(self, action: str, page: Page) -> ShopState | None:
        """The state ``action`` leads to from the current one, or ``None`` when it is invalid."""
        parsed = parse_action(action)
        if parsed is None:
            return None
        verb, argument = parsed
        state = self._state
        if verb == "search":
            return ShopState("results", query=argument) if state.kind == "search" else None
        target = resolve_click(argument, page)
        if target is None:
            return None
        if target == BACK_TO_SEARCH:
            return ShopState()
        if state.kind == "results":
            if target in (NEXT_PAGE, PREV_PAGE):
                return replace(state, page_number=state.page_number + (1 if target == NEXT_PAGE else -1))
            asin = next(a for a, _, _ in page.results if a.lower() == target)
            return replace(state, kind="item", asin=asin, chosen=())
        if state.kind == "detail":  # only < prev is left
            return replace(state, kind="item", detail="")
        if target == PREV_PAGE:
            return replace(state, kind="results", asin="", chosen=())
        if target in (DESCRIPTION, FEATURES):
            return replace(state, kind="detail", detail=target)
        product = self._catalog.by_asin[state.asin]
        if target == BUY_NOW:
            bought = purchase_reward(product.rewarded(), self._goal.rewarded(self._catalog.by_asin[self._goal.asin]), dict(state.chosen))
            return replace(state, kind="done", bought=bought)
        values = {value.lower(): (name, value) for name, values in product.options for value in values}
        name, value = values[target]
        return replace(state, chosen=choose(state.chosen, name, value))

    def snapshot(self) -> ShopSnapshot:
        """The current state (immutable values, so no copy is needed)."""
        if self._goal is None or self._catalog is None:
            raise RuntimeError("call reset(task) before snapshot()")
        return ShopSnapshot(self._catalog, self._goal, self._state)

    def restore(self, snapshot: ShopSnapshot) -> None:
        """Return to ``snapshot`` (from this or another ShopEnv); any number of times."""
        if not isinstance(snapshot, ShopSnapshot):
            raise TypeError(f"expected a ShopSnapshot from snapshot(), got {type(snapshot).__name__}")
        self._catalog, self._goal, self._state = snapshot.catalog, snapshot.goal, snapshot.state

    def expert_actions(self, task: Task) -> list[str]:
        """A shortest purchase scoring 1: search, page to the product, click it, choose, buy."""
        from leafe.envs.shop_expert import expert_plan

        catalog, goal = goal_of(task)
        return expert_plan(catalog, goal, self.page_size)

    def diagnose(self, task: Task, actions: Sequence[str | None]) -> Diagnosis | None:
        """The first turn that left the path to a purchase scoring 1 (see :mod:`leafe.envs.shop_expert`)."""
        from leafe.envs.shop_expert import diagnose

        return diagnose(self, task, actions)

    def _info(self, *, invalid_action: bool = False) -> dict[str, Any]:
        bought = self._state.bought
        info: dict[str, Any] = {
            "success": bool(bought is not None and bought.success),
            "invalid_action": invalid_action,
            "page": self._state.kind,
        }
        if bought is not None:
            info["score"] = {
                "r_type": bought.r_type, "attributes": [bought.attributes_matched, bought.attributes_total],
                "options": [bought.options_matched, bought.options_total], "price_ok": bought.price_ok,
            }
        return info
