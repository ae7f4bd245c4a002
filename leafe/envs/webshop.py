"""A client for a user-run WebShop server (princeton-nlp/WebShop's Flask app), over HTTP.

WebShop's product data cannot be downloaded here; users who have it start the site themselves
(``./run_dev.sh``, port 3000) and point ``env.base_url`` at it. The client browses it the way
the ReAct-style WebShop agents do, through the site's URL scheme, one GET per action:

    /<session>                                           search page (goal from the session)
    /search_results/<session>/<keywords>/<page>          results, 10 a page
    /item_page/<session>/<asin>/<keywords>/<page>/<options>
    /item_sub_page/<session>/<asin>/<keywords>/<page>/<sub page>/<options>
    /done/<session>/<asin>/<options>                     purchase; the score is in #reward

``<options>`` is the Python dict literal of the chosen options. Session ``fixed_<i>`` plays
goal ``i`` of the server's fixed goal order. Splits follow WebShop's baselines: goals
``[0, test_goals)`` are the test split, ``[train_start, num_goals)`` the train split (500 and
1500 by default: goals 500-1499 are WebShop's validation range and are left out).

Pages are parsed (buttons, product links, option radios, texts by the site's ids and classes)
into the same :class:`~leafe.envs.shop_pages.Page` the embedded shop renders, so both read alike.
Every URL holds the whole page state, so snapshots are client-side copies (no request); the
score comes from the server's own reward. No expert demonstrations: the server has none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import httpx

from leafe.config import ConfigError
from leafe.envs.base import EnvUnreachable, StepResult
from leafe.envs.shop_pages import BACK_TO_SEARCH, BUY_NOW, NEXT_PAGE, PREV_PAGE, RULES, Page, invalid_feedback
from leafe.envs.shop_pages import parse_action, render, resolve_click
from leafe.types import Task

PAGE_SIZE = 10  # WebShop's results per page
_TOTAL = re.compile(r"page\s+(\d+)\s*\(total results:\s*(\d+)\)", re.IGNORECASE)


class WebshopUnreachable(EnvUnreachable):
    """The WebShop server at ``env.base_url`` did not answer (or answered with a server error)."""


@dataclass(frozen=True)
class ParsedPage:
    """What a WebShop page's HTML holds (see :func:`parse_html`)."""

    instruction: str
    buttons: tuple[str, ...]
    products: tuple[tuple[str, str, str], ...]
    radios: tuple[tuple[str, str], ...]
    title: str
    price: str
    total: int
    texts: tuple[str, ...]
    reward: float | None


class _Parser(HTMLParser):
    """Collects the parts of a WebShop page by tag, id and class (scripts and styles skipped)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str, str]] = []  # (tag, id, class) of the open elements
        self.buttons: list[str] = []
        self.products: list[list[str]] = []
        self.radios: list[tuple[str, str]] = []
        self.parts: dict[str, list[str]] = {"instruction": [], "h2": [], "h3": [], "h4": [], "info": [], "reward": []}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "input" and attributes.get("type") == "radio":
            self.radios.append((attributes.get("name", ""), attributes.get("value", "")))
            return
        if tag in ("input", "img", "br", "meta", "link", "hr"):
            return
        self.stack.append((tag, attributes.get("id", ""), attributes.get("class", "")))
        if tag == "a" and "product-link" in attributes.get("class", "").split():
            self.products.append(["", "", ""])

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == tag:
                del self.stack[index:]
                return

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if not text or any(tag in ("script", "style", "head", "title") for tag, _, _ in self.stack):
            return
        tags = [tag for tag, _, _ in self.stack]
        ids = {element_id for _, element_id, _ in self.stack}
        classes = {name for _, _, cls in self.stack for name in cls.split()}
        if "instruction-text" in ids:
            self.parts["instruction"].append(text)
        elif "reward" in ids:
            self.parts["reward"].append(text)
        elif "button" in tags:
            self.buttons.append(text)
        elif "product-link" in classes and self.products:
            self.products[-1][0] += text
        elif "product-title" in classes and self.products:
            self.products[-1][1] += text
        elif "product-price" in classes and self.products:
            self.products[-1][2] += text
        elif "product-info" in classes:
            self.parts["info"].append(text)
        elif tags and tags[-1] in ("h2", "h3", "h4"):
            self.parts[tags[-1]].append(text)


def parse_html(html: str) -> ParsedPage:
    """The instruction, buttons, product links, option radios, title, price and score of a page."""
    parser = _Parser()
    parser.feed(html)
    parts = parser.parts
    instruction = " ".join(parts["instruction"]).strip()
    instruction = re.sub(r"^instruction:\s*", "", instruction, flags=re.IGNORECASE)
    total = next((int(m.group(2)) for m in map(_TOTAL.search, parts["h3"]) if m), 0)
    price = next((text.split(":", 1)[1].strip() for text in parts["h4"] if text.lower().startswith("price:")), "")
    reward_text = re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", " ".join(parts["reward"]).replace("(min 0.0, max 1.0)", ""))
    return ParsedPage(
        instruction=instruction,
        buttons=tuple(parser.buttons),
        products=tuple((asin, title, price_text) for asin, title, price_text in parser.products),
        radios=tuple(parser.radios),
        title=" ".join(parts["h2"]),
        price=price,
        total=total,
        texts=tuple(parts["info"]),
        reward=float(reward_text[-1]) if reward_text else None,
    )


@dataclass(frozen=True)
class WebshopState:
    """The client's whole state: where it is, the page's HTML, and what the URLs need."""

    kind: str
    html: str
    query: str = ""
    page_number: int = 1
    asin: str = ""
    chosen: tuple[tuple[str, str], ...] = ()
    detail: str = ""


class WebshopTasks:
    """WebShop's fixed goals by index: test ``[0, test_goals)``, train ``[train_start, num_goals)``."""

    def __init__(self, num_goals: int = 6910, test_goals: int = 500, train_start: int = 1500) -> None:
        if not 0 < test_goals <= train_start < num_goals:
            raise ValueError(f"need 0 < test_goals <= train_start < num_goals, got {test_goals}, {train_start}, {num_goals}")
        self.ranges = {"test": range(0, test_goals), "train": range(train_start, num_goals)}

    def tasks(self, split: str, count: int | None = None) -> list[Task]:
        """The first ``count`` goals of ``split`` (all when ``None``)."""
        if split not in self.ranges:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        goals = self.ranges[split]
        if count is not None and not 0 <= count <= len(goals):
            raise ValueError(f"the {split} split has {len(goals)} WebShop goals (env.num_goals), asked for {count}")
        chosen = goals if count is None else goals[:count]
        return [Task(f"webshop/{split}/{index:05d}", split, {"goal_index": index}) for index in chosen]


class WebshopEnv:
    """WebShop through its web server: ``reset(task)``, ``step(action)``, client-side snapshots.

    Args:
        base_url: the server's address (``env.base_url``), e.g. ``http://127.0.0.1:3000``.
        timeout_s: per request; a server that does not answer in time raises
            :class:`WebshopUnreachable`.
    """

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s)
        self._session = ""
        self._instruction = ""
        self._state: WebshopState | None = None

    def reset(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Open goal ``task.params["goal_index"]``'s search page."""
        try:
            index = int(task.params["goal_index"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{task.task_id}: not a WebShop task (params need goal_index)") from None
        self._session = f"fixed_{index}"
        self._state = WebshopState("search", self._get(f"/{self._session}"))
        self._instruction = parse_html(self._state.html).instruction
        instruction = f"{RULES}\nInstruction: {self._instruction}"
        return render(self.page(), PAGE_SIZE), {"instruction": instruction, **self._info()}

    def step(self, action: str) -> StepResult:
        """Apply one ``search[...]``/``click[...]`` by requesting the page it leads to."""
        if self._state is None:
            raise RuntimeError("call reset(task) before step()")
        if self._state.kind == "done":
            raise RuntimeError("the episode has terminated; call reset() before stepping again")
        page = self.page()
        following = self._follow(action, page)
        if following is None:
            return invalid_feedback(action, page), 0.0, False, False, self._info(invalid_action=True)
        self._state = following
        if following.kind == "done":
            score = parse_html(following.html).reward
            if score is None:
                raise RuntimeError(f"the WebShop server's done page at {self.base_url} has no #reward score")
            return render(self.page(), PAGE_SIZE), score, True, False, self._info()
        return render(self.page(), PAGE_SIZE), 0.0, False, False, self._info()

    def page(self) -> Page:
        """The current page, from its HTML and the client state."""
        state = self._state
        assert state is not None, "call reset(task) first"
        parsed = parse_html(state.html)
        buttons = tuple(b.lower() for b in parsed.buttons if b.lower() != "search")
        if state.kind == "search":
            return Page("search", instruction=self._instruction)
        if state.kind == "results":
            return Page("results", query=state.query, page_number=state.page_number, total=parsed.total, results=parsed.products, buttons=buttons)
        options: dict[str, list[str]] = {}
        for name, value in parsed.radios:
            options.setdefault(name, []).append(value)
        common = {"asin": state.asin, "title": parsed.title, "price": parsed.price, "chosen": dict(state.chosen)}
        if state.kind == "item":
            return Page("item", options=tuple((n, tuple(v)) for n, v in options.items()), buttons=buttons, **common)
        if state.kind == "detail":
            return Page("detail", detail=(state.detail, parsed.texts), buttons=buttons, **common)
        return Page("done", score=parsed.reward or 0.0, **{**common, "title": "", "price": ""})

    def _follow(self, action: str, page: Page) -> WebshopState | None:
        parsed = parse_action(action)
        state = self._state
        assert state is not None
        if parsed is None:
            return None
        verb, argument = parsed
        if verb == "search":
            query = " ".join(argument.replace("/", " ").split())
            return self._results(query, 1) if state.kind == "search" and query else None
        target = resolve_click(argument, page)
        if target is None:
            return None
        if target == BACK_TO_SEARCH:
            return WebshopState("search", self._get(f"/{self._session}"))
        if state.kind == "results":
            if target in (NEXT_PAGE, PREV_PAGE):
                return self._results(state.query, max(1, state.page_number + (1 if target == NEXT_PAGE else -1)))
            asin = next(a for a, _, _ in page.results if a.lower() == target)
            return self._item(replace(state, kind="item", asin=asin, chosen=()))
        if state.kind == "detail":  # its only other button is < prev
            return self._item(replace(state, kind="item", detail=""))
        if target == PREV_PAGE:
            return self._results(state.query, state.page_number)
        if target == BUY_NOW:
            return replace(state, kind="done", html=self._get(f"/done/{self._session}/{state.asin}/{self._options(state)}"))
        option = next(((name, value) for name, values in page.options for value in values if value.lower() == target), None)
        if option is not None:
            chosen = dict(state.chosen)
            chosen[option[0]] = option[1]
            return self._item(replace(state, chosen=tuple(chosen.items())))
        sub = target.capitalize()
        url = f"/item_sub_page/{self._session}/{state.asin}/{quote(state.query, safe='')}/{state.page_number}/{sub}/{self._options(state)}"
        return replace(state, kind="detail", detail=target, html=self._get(url))

    def _results(self, query: str, page_number: int) -> WebshopState:
        html = self._get(f"/search_results/{self._session}/{quote(query, safe='')}/{page_number}")
        return WebshopState("results", html, query=query, page_number=page_number)

    def _item(self, state: WebshopState) -> WebshopState:
        url = f"/item_page/{self._session}/{state.asin}/{quote(state.query, safe='')}/{state.page_number}/{self._options(state)}"
        return replace(state, html=self._get(url))

    @staticmethod
    def _options(state: WebshopState) -> str:
        return quote(repr(dict(state.chosen)), safe="")

    def _get(self, path: str) -> str:
        url = self.base_url + path
        try:
            response = self._client.get(url)
        except httpx.TimeoutException:
            raise WebshopUnreachable(f"env.base_url: the WebShop server at {self.base_url} did not answer {path} in time (env.timeout_s)") from None
        except httpx.TransportError as error:
            raise WebshopUnreachable(
                f"env.base_url: cannot reach a WebShop server at {self.base_url} ({error}); start it (WebShop's ./run_dev.sh) or fix env.base_url"
            ) from None
        if response.status_code >= 500:
            raise WebshopUnreachable(f"env.base_url: the WebShop server at {self.base_url} failed on {path} ({response.status_code})")
        if response.status_code >= 400:
            raise ConfigError(
                f"env.base_url: the server at {self.base_url} answered {response.status_code} for {path}: is it a WebShop "
                "server, and is the goal index below its goal count (env.num_goals)?"
            )
        return response.text

    def snapshot(self) -> tuple[str, str, WebshopState]:
        """The client state (session, instruction, page): every URL holds the page's whole state."""
        if self._state is None:
            raise RuntimeError("call reset(task) before snapshot()")
        return (self._session, self._instruction, self._state)

    def restore(self, snapshot: tuple[str, str, WebshopState]) -> None:
        """Return to ``snapshot`` without a request; any number of times."""
        if not (isinstance(snapshot, tuple) and len(snapshot) == 3 and isinstance(snapshot[2], WebshopState)):
            raise TypeError(f"expected a snapshot from WebshopEnv.snapshot(), got {type(snapshot).__name__}")
        self._session, self._instruction, self._state = snapshot

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def _info(self, *, invalid_action: bool = False) -> dict[str, Any]:
        state = self._state
        assert state is not None
        score = parse_html(state.html).reward if state.kind == "done" else None
        return {"success": bool(score is not None and score >= 1.0 - 1e-9), "invalid_action": invalid_action, "page": state.kind}
