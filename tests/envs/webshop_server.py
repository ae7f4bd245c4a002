"""A small WebShop server for the client tests: WebShop's URL scheme and page structure (the ids
and classes its text environment reads) over the embedded shop's catalogue, on real HTTP.

    with running_server(num_products=200) as base_url:
        env = WebshopEnv(base_url)

Session ``fixed_<i>`` plays the goal of the ``i``-th product of the catalogue. Like WebShop's
site, every page is derived from its URL alone and the purchase is scored by the server.
"""

from __future__ import annotations

import ast
import html
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

from leafe.envs.shop_catalog import SEARCH_RETURN_N, Catalog, build_catalog, goal_for
from leafe.envs.shop_reward import purchase_reward

PAGE_SIZE = 10


def _page(instruction: str, body: str) -> str:
    head = "<html><head><title>WebShop</title><style>.btn{margin:2px}</style></head><body>"
    text = f'<div id="instruction-text"><h4>Instruction:<br>{html.escape(instruction)}</h4></div>'
    return f"{head}{text}{body}</body></html>"


def _button(label: str) -> str:
    return f'<form method="post"><button class="btn btn-primary" type="submit">{html.escape(label)}</button></form>'


class ShopSite:
    """Renders WebShop's pages for the embedded catalogue ``(seed, num_products)``."""

    def __init__(self, seed: int = 0, num_products: int = 200) -> None:
        self.seed = seed
        self.catalog: Catalog = build_catalog(seed, num_products)

    def goal(self, session: str):
        index = int(session.rsplit("_", 1)[-1])
        return goal_for(self.seed, self.catalog.products[index])

    def respond(self, segments: list[str]) -> str:
        """The HTML for a path split into unquoted segments; KeyError/ValueError/IndexError -> 404."""
        route, args = (segments[0], segments[1:]) if len(segments) > 1 else ("index", segments)
        goal = self.goal(args[0])
        if route == "index":
            form = '<form method="post"><input id="search_input" type="text" name="search_query">'
            return _page(goal.instruction, form + '<button class="btn btn-success" type="submit">Search</button></form>')
        if route == "search_results":
            keywords, page = args[1], int(args[2])
            found = self.catalog.search(keywords)[:SEARCH_RETURN_N]
            shown = found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
            body = _button("Back to Search") + f"<h3>Page {page} (Total results: {len(found)})</h3>"
            body += (_button("< Prev") if page > 1 else "") + _button("Next >")
            for asin in shown:
                product = self.catalog.by_asin[asin]
                body += f'<div><h4><a class="product-link" href="#">{asin}</a></h4>'
                body += f'<h4 class="product-title">{html.escape(product.title)}</h4><h5 class="product-price">${product.price:.2f}</h5></div>'
            return _page(goal.instruction, body)
        product = self.catalog.by_asin[args[1]]
        options = ast.literal_eval(args[-1])
        if route == "item_page":
            body = _button("Back to Search") + _button("< Prev")
            for name, values in product.options:
                body += f"<h4>{html.escape(name)}</h4>" + "".join(
                    f'<input type="radio" name="{html.escape(name)}" value="{html.escape(v)}"><label>{html.escape(v)}</label>' for v in values
                )
            body += f"<h2>{html.escape(product.title)}</h2><h4>Price: ${product.price:.2f}</h4><h4>Rating: N.A.</h4>"
            body += "".join(_button(label) for label in ("Description", "Features", "Reviews", "Buy Now"))
            return _page(goal.instruction, body)
        if route == "item_sub_page":
            texts = {"Description": [product.description], "Features": list(product.features), "Reviews": []}[args[4]]
            body = _button("Back to Search") + _button("< Prev")
            body += "".join(f'<p class="product-info">{html.escape(text)}</p>' for text in texts)
            return _page(goal.instruction, body)
        if route == "done":
            target = self.catalog.by_asin[goal.asin]
            reward = purchase_reward(product.rewarded(), goal.rewarded(target), options).reward
            body = f'<h1>Thank you for shopping with us!</h1><h3 id="reward">Your score (min 0.0, max 1.0)<pre>{reward}</pre></h3>'
            return _page(goal.instruction, body)
        raise KeyError(route)


def _handler(site: ShopSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            segments = [unquote(part) for part in self.path.split("?")[0].strip("/").split("/")]
            try:
                body, status = site.respond(segments), 200
            except (KeyError, ValueError, IndexError, SyntaxError):
                body, status = "<html><body>Not Found</body></html>", 404
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def running_server(seed: int = 0, num_products: int = 200) -> Iterator[str]:
    """Serve the site on a free localhost port in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ShopSite(seed, num_products)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def options_path(options: dict[str, str]) -> str:
    """The ``<options>`` URL segment for ``options`` (as the client writes it)."""
    return quote(repr(options), safe="")
