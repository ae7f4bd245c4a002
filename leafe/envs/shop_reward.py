"""WebShop's purchase reward, so that partial credit and success mean what they mean in the paper.

For a goal with attributes ``A``, options ``O`` and price limit ``p``, buying product ``x`` with
chosen options ``o`` scores (Yao et al., 2022, WebShop, section 3.3)

    reward = r_type * (|A matched| + |O matched| + [price(x) <= p]) / (|A| + |O| + 1)

* a goal attribute is matched when one of the product's attributes matches it fuzzily
  (token-set ratio > 85, as WebShop's ``thefuzz`` call with its default preprocessing), or
  failing that when it occurs in the product's title, features or description;
* a goal option is matched when a chosen option value matches it fuzzily after colour
  normalisation (``"navy blue"`` -> ``"blue"``: the first colour word of WebShop's list);
* ``r_type`` is WebShop's type factor: 1 when the product has the goal's search query, shares
  two category-path levels with it, or shares more than 20% of the goal product's title nouns;
  0.5 otherwise; 0.1 when under 10% of the nouns are shared; 0 when none are.

Success is ``reward == 1``. One departure: WebShop finds title nouns with spaCy; here every
product carries its nouns (brand and type nouns), known from the generator. The WebShop client
(:mod:`leafe.envs.webshop`) does not use this module: the server computes its own reward.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

FUZZY_THRESHOLD = 85  # WebShop: a fuzzy match needs a token-set ratio above 85

# WebShop's colour words, in its order: normalisation keeps the first one found in a value.
COLOR_WORDS: tuple[str, ...] = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue", "blush",
    "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "cheetah",
    "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper", "coral", "cranberry", "cream", "crystal",
    "dark", "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape", "graphite", "grass",
    "gray", "green", "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light",
    "lilac", "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha", "multicolor", "mushroom",
    "mustard", "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink", "plum", "purple", "rainbow",
    "red", "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver", "skull", "slate", "steel", "stone",
    "stonewash", "sunflower", "tan", "taupe", "teal", "tiger", "turquoise", "violet", "walnut", "wheat", "white",
    "wine", "yellow",
)


@dataclass(frozen=True)
class RewardedProduct:
    """What the reward reads of a product (WebShop's field names in brackets).

    Attributes:
        query: the type's search query (``query``).
        path: the category path, ``" › "``-joined (``product_category``).
        nouns: the title's nouns, lower case (spaCy's ``NOUN``/``PROPN`` tokens of ``name``).
        attributes: the product's attributes (``Attributes``).
        title, features, description: the texts searched for unmatched attributes
            (``Title``, ``BulletPoints``, ``Description``).
        price: the price in dollars.
    """

    query: str
    path: str
    nouns: tuple[str, ...]
    attributes: tuple[str, ...]
    title: str
    features: tuple[str, ...]
    description: str
    price: float


@dataclass(frozen=True)
class RewardGoal:
    """What the reward reads of a goal: the target's type fields and the asked-for values.

    Attributes:
        query, path, nouns: the goal product's type fields (see :class:`RewardedProduct`).
        attributes: the goal attributes (``attributes``).
        options: the goal option values (``goal_options``), e.g. ``("red", "large")``.
        price_upper: the price limit in dollars (``price_upper``).
    """

    query: str
    path: str
    nouns: tuple[str, ...]
    attributes: tuple[str, ...]
    options: tuple[str, ...]
    price_upper: float


@dataclass(frozen=True)
class RewardBreakdown:
    """A purchase's score and its parts (what the done page reports)."""

    reward: float
    r_type: float
    attributes_matched: int
    attributes_total: int
    options_matched: int
    options_total: int
    price_ok: bool

    @property
    def success(self) -> bool:
        """WebShop's success: the full reward."""
        return self.reward >= 1.0 - 1e-9


def fuzzy_match(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` match as WebShop's ``fuzz.token_set_ratio(a, b) > 85`` does
    (``thefuzz`` lower-cases, replaces non-alphanumerics by spaces and rounds the ratio)."""
    return round(fuzz.token_set_ratio(a, b, processor=default_process)) > FUZZY_THRESHOLD


def normalize_color(value: str) -> str:
    """The first of WebShop's colour words contained in ``value``, else ``value`` itself."""
    return next((color for color in COLOR_WORDS if color in value), value)


def type_reward(product: RewardedProduct, goal: RewardGoal) -> float:
    """WebShop's ``r_type`` in {0, 0.1, 0.5, 1}: is the purchase the right kind of product?"""
    query_match = product.query == goal.query
    levels = {level.strip() for level in product.path.split("›")} & {level.strip() for level in goal.path.split("›")}
    category_match = len(levels) >= 2
    wanted = set(goal.nouns)
    title_score = len(set(product.nouns) & wanted) / len(wanted) if wanted else 0.2
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return r_type


def attributes_matched(product: RewardedProduct, goal_attributes: Iterable[str]) -> int:
    """How many goal attributes the product has (fuzzily, or in its title/features/description)."""
    texts = (product.title.lower(), " ".join(product.features).lower(), product.description.lower())
    count = 0
    for wanted in goal_attributes:
        if any(fuzzy_match(have, wanted) for have in product.attributes) or any(wanted in text for text in texts):
            count += 1
    return count


def options_matched(chosen: Iterable[str], goal_options: Iterable[str]) -> int:
    """How many goal option values some chosen option value matches (after colour normalisation)."""
    chosen_norm = [normalize_color(value) for value in chosen]
    return sum(1 for wanted in goal_options if any(fuzzy_match(have, normalize_color(wanted)) for have in chosen_norm))


def purchase_reward(product: RewardedProduct, goal: RewardGoal, chosen_options: Mapping[str, str] | Sequence[str]) -> RewardBreakdown:
    """The reward of buying ``product`` with ``chosen_options`` (name -> value, or values) for ``goal``."""
    values = list(chosen_options.values()) if isinstance(chosen_options, Mapping) else list(chosen_options)
    r_type = type_reward(product, goal)
    n_attr = attributes_matched(product, goal.attributes)
    n_opt = options_matched(values, goal.options)
    price_ok = product.price <= goal.price_upper
    total = len(goal.attributes) + len(goal.options) + 1
    reward = r_type * (n_attr + n_opt + int(price_ok)) / total
    return RewardBreakdown(
        reward=reward,
        r_type=r_type,
        attributes_matched=n_attr,
        attributes_total=len(goal.attributes),
        options_matched=n_opt,
        options_total=len(goal.options),
        price_ok=price_ok,
    )
