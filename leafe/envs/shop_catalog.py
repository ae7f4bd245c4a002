"""The embedded shop's catalogue, its search engine, and the shopping goals drawn from it.

Everything is derived from ``(seed, num_products)``: products (:func:`build_catalog`, a few
thousand in ~0.1 s, cached per process), one goal per product (:func:`goal_for`), and the
train/test split of the goals (:class:`ShopTasks`). Nothing is stored on disk.

A goal is written from its target product the way WebShop's instructions are: the product type,
one or two of its attributes, one value of each of its options and a price limit ("i need
machine wash cotton men's t-shirt with size large and color red, and price lower than 30.00
dollars"). Any product that matches all of that scores 1 (:mod:`leafe.envs.shop_reward`), not
only the target.

Search is BM25 (``rank_bm25``, the library WebShop's engine module imports) over title,
description, first feature and option values, lower-cased, with a plural ``s`` dropped so that
``shirts`` finds ``shirt``; like WebShop it returns the top 50 products.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import string
import threading
from dataclasses import dataclass

from leafe.envs.shop_data import BRANDS, PRODUCT_TYPES, ProductType
from leafe.envs.shop_reward import RewardedProduct, RewardGoal
from leafe.types import Task

SEARCH_RETURN_N = 50  # WebShop: results of one search
PRICE_STEPS = tuple(10.0 * i for i in range(1, 100))  # WebShop's candidate price limits
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_STOPWORDS = frozenset("a an and are for i im in is it lower m me need of price than that the to with want looking dollars".split())


@dataclass(frozen=True)
class Product:
    """One product of the catalogue (WebShop's field names in the docstring of ProductType).

    Attributes:
        asin: the product id, ten characters (``"B0"`` + 8), shown on result pages.
        options: (option name, offered values) pairs, e.g. ``(("size", ("small", "large")),)``.
        features: the bullet points of the features page.
    """

    asin: str
    type_index: int
    brand: str
    title: str
    price: float
    attributes: tuple[str, ...]
    options: tuple[tuple[str, tuple[str, ...]], ...]
    description: str
    features: tuple[str, ...]

    @property
    def kind(self) -> ProductType:
        """The product's type."""
        return PRODUCT_TYPES[self.type_index]

    @property
    def nouns(self) -> tuple[str, ...]:
        """The title's nouns (brand and type nouns), lower case."""
        return (self.brand.lower(), *self.kind.nouns)

    def option_values(self) -> dict[str, str]:
        """Offered value -> its option name (values are distinct across a product's options)."""
        return {value: name for name, values in self.options for value in values}

    def rewarded(self) -> RewardedProduct:
        """The fields the reward reads."""
        return RewardedProduct(
            query=self.kind.query, path=self.kind.path, nouns=self.nouns, attributes=self.attributes,
            title=self.title, features=self.features, description=self.description, price=self.price,
        )


@dataclass(frozen=True)
class Goal:
    """A shopping goal: the instruction and what the reward checks.

    Attributes:
        asin: the product the goal was written from (one of possibly several that score 1).
        options: (option name, value) pairs asked for, in the instruction's order.
        price_upper: the price limit in dollars (1e6: no limit stated).
    """

    asin: str
    instruction: str
    attributes: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    price_upper: float

    def rewarded(self, target: Product) -> RewardGoal:
        """The fields the reward reads (``target`` is the product with ``asin``)."""
        return RewardGoal(
            query=target.kind.query, path=target.kind.path, nouns=target.nouns, attributes=self.attributes,
            options=tuple(value for _, value in self.options), price_upper=self.price_upper,
        )


def tokenize(text: str) -> list[str]:
    """Search tokens: lower-case words and numbers, stop words dropped, a plural ``s`` removed."""
    tokens = []
    for token in _TOKEN.findall(text.lower()):
        if token in _STOPWORDS or (len(token) == 1 and not token.isdigit()):
            continue
        if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
            token = token[:-1]
        tokens.append(token)
    return tokens


def _capitalized(text: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in text.split())


def _make_product(rng: random.Random, asin: str, type_index: int) -> Product:
    kind = PRODUCT_TYPES[type_index]
    brand = rng.choice(BRANDS[kind.category])
    attributes = tuple(rng.sample(kind.attributes, rng.randint(3, 4)))
    in_title = attributes[: rng.randint(1, 2)]
    title = _capitalized(f"{brand} {' '.join(in_title)} {kind.phrase}")
    options = tuple(
        (name, tuple(sorted(rng.sample(pool, rng.randint(2, min(5, len(pool)))), key=pool.index)))
        for name, pool in kind.options
    )
    listed = ", ".join(attributes[:-1]) + f" and {attributes[-1]}"
    description = f"The {brand} {kind.phrase} is {listed}. Backed by our 30 day return policy."
    features = tuple(_capitalized(attribute) for attribute in attributes) + ("30 day returns",)
    price = round(rng.uniform(*kind.price), 2)
    return Product(asin, type_index, brand, title, price, attributes, options, description, features)


class Catalog:
    """The products of one seed, with BM25 search. Build it with :func:`build_catalog`."""

    def __init__(self, products: tuple[Product, ...]) -> None:
        self.products = products
        self.by_asin = {product.asin: product for product in products}
        self._index = None
        self._results: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def search(self, query: str) -> tuple[str, ...]:
        """The asins of the top :data:`SEARCH_RETURN_N` products for ``query``, best first.

        Ties keep catalogue order; a query without searchable words finds nothing.
        """
        key = " ".join(tokenize(query))
        with self._lock:
            if key in self._results:
                return self._results[key]
            if self._index is None:
                from rank_bm25 import BM25Okapi

                self._index = BM25Okapi([tokenize(_search_text(p)) for p in self.products])
            scores = self._index.get_scores(key.split()) if key else None
        if scores is None:
            found: tuple[str, ...] = ()
        else:
            order = sorted(range(len(self.products)), key=lambda i: -scores[i])
            found = tuple(self.products[i].asin for i in order[:SEARCH_RETURN_N] if scores[i] > 0)
        with self._lock:
            self._results[key] = found
        return found


def _search_text(product: Product) -> str:
    options = " ".join(f"{name} {' '.join(values)}" for name, values in product.options)
    return f"{product.title} {product.description} {product.features[0]} {options}"


@functools.lru_cache(maxsize=4)
def build_catalog(seed: int, num_products: int) -> Catalog:
    """The ``num_products`` products of catalogue ``seed`` (types balanced, order shuffled)."""
    if num_products < len(PRODUCT_TYPES):
        raise ValueError(f"num_products must be at least {len(PRODUCT_TYPES)} (one per product type), got {num_products}")
    rng = random.Random(f"leafe-shop/{seed}")
    alphabet = string.ascii_uppercase + string.digits
    type_order = [i % len(PRODUCT_TYPES) for i in range(num_products)]
    rng.shuffle(type_order)
    products, seen = [], set()
    for type_index in type_order:
        asin = "B0" + "".join(rng.choices(alphabet, k=8))
        while asin in seen:
            asin = "B0" + "".join(rng.choices(alphabet, k=8))
        seen.add(asin)
        products.append(_make_product(rng, asin, type_index))
    return Catalog(tuple(products))


def _price_upper(rng: random.Random, price: float) -> float:
    """WebShop's limit: the larger of two of the four multiples of 10 above the price."""
    above = [step for step in PRICE_STEPS if step > price][:4]
    return max(rng.sample(above, 2)) if len(above) >= 2 else 1e6


def goal_for(seed: int, product: Product) -> Goal:
    """The goal written from ``product`` (deterministic in ``seed`` and the asin)."""
    rng = random.Random(f"leafe-shop-goal/{seed}/{product.asin}")
    attributes = tuple(rng.sample(product.attributes, rng.randint(1, 2)))
    options = tuple((name, rng.choice(values)) for name, values in product.options)
    price_upper = _price_upper(rng, product.price)
    phrase = product.kind.phrase
    wanted = " and ".join(attributes)
    with_options = " and ".join(f"{name} {value}" for name, value in options)
    start = rng.choice((f"i need {wanted} {phrase}", f"i am looking for {phrase} that is {wanted}", f"find me {wanted} {phrase}"))
    price_text = f", and price lower than {price_upper:.2f} dollars" if price_upper < 1e6 else ""
    return Goal(product.asin, f"{start} with {with_options}{price_text}", attributes, options, price_upper)


def split_of(seed: int, asin: str, test_fraction: float) -> str:
    """``"test"`` when a hash of (seed, asin) mapped to [0, 1) is below ``test_fraction``."""
    value = int.from_bytes(hashlib.sha256(f"{seed}/{asin}".encode()).digest()[:8], "big") / 2**64
    return "test" if value < test_fraction else "train"


class ShopTasks:
    """One goal per product of catalogue ``seed``; a goal's split is a hash of its target product,
    so train and test never share a target (they share the shop, as in WebShop).

    Task params: ``{"seed", "num_products", "asin"}``; task ``i`` of a split is the ``i``-th
    product of that split in catalogue order.
    """

    def __init__(self, seed: int = 0, num_products: int = 3000, test_fraction: float = 0.2) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.seed, self.num_products, self.test_fraction = seed, num_products, test_fraction
        self._asins: dict[str, list[str]] | None = None

    def _split_asins(self) -> dict[str, list[str]]:
        if self._asins is None:
            asins: dict[str, list[str]] = {"train": [], "test": []}
            for product in build_catalog(self.seed, self.num_products).products:
                asins[split_of(self.seed, product.asin, self.test_fraction)].append(product.asin)
            self._asins = asins
        return self._asins

    def tasks(self, split: str, count: int | None = None) -> list[Task]:
        """The first ``count`` goals of ``split`` (all when ``None``), in a fixed order."""
        asins = self._split_asins()
        if split not in asins:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        available = asins[split]
        if count is not None and not 0 <= count <= len(available):
            raise ValueError(f"the {split} split has {len(available)} goals (env.num_products={self.num_products}), asked for {count}")
        chosen = available if count is None else available[:count]
        params = {"seed": self.seed, "num_products": self.num_products}
        return [Task(f"shop/{split}/{i:04d}", split, {**params, "asin": asin}) for i, asin in enumerate(chosen)]


def goal_of(task: Task) -> tuple[Catalog, Goal]:
    """The catalogue and goal of a shop task (raises ValueError on foreign or broken params)."""
    try:
        seed, num_products, asin = int(task.params["seed"]), int(task.params["num_products"]), str(task.params["asin"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{task.task_id}: not a shop task (params need seed, num_products, asin)") from None
    catalog = build_catalog(seed, num_products)
    if asin not in catalog.by_asin:
        raise ValueError(f"{task.task_id}: product {asin} is not in catalogue seed={seed} num_products={num_products}")
    return catalog, goal_for(seed, catalog.by_asin[asin])
