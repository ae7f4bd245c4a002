"""The embedded shop's catalogue, goals, search and splits."""

from __future__ import annotations

import itertools

import pytest

from leafe.envs.shop_catalog import SEARCH_RETURN_N, ShopTasks, build_catalog, goal_for, goal_of, tokenize
from leafe.envs.shop_data import BRANDS, PRODUCT_TYPES
from leafe.envs.shop_reward import fuzzy_match, normalize_color
from leafe.types import Task


def test_catalogue_is_deterministic_in_its_seed():
    build_catalog.cache_clear()
    first = build_catalog(0, 300).products
    build_catalog.cache_clear()
    assert build_catalog(0, 300).products == first
    assert build_catalog(1, 300).products != first
    assert len({product.asin for product in first}) == 300


def test_catalogue_covers_every_type_and_products_are_well_formed():
    products = build_catalog(0, 3000).products
    assert {product.type_index for product in products} == set(range(len(PRODUCT_TYPES)))
    for product in products:
        kind = product.kind
        assert len(product.asin) == 10 and product.asin.startswith("B0")
        assert kind.price[0] <= product.price <= kind.price[1]
        assert set(product.attributes) <= set(kind.attributes)
        values = [value for _, offered in product.options for value in offered]
        assert len(values) == len(set(values)), product  # a click on a value names one option


@pytest.mark.parametrize("kind", PRODUCT_TYPES, ids=lambda kind: kind.query)
def test_no_two_values_of_a_pool_match_each_other(kind):
    """Otherwise the reward would credit a wrong option or attribute."""
    for _, pool in kind.options:
        for a, b in itertools.permutations(pool, 2):
            assert not fuzzy_match(normalize_color(a), normalize_color(b)), (a, b)
    for a, b in itertools.permutations(kind.attributes, 2):
        assert not fuzzy_match(a, b) and a not in b, (a, b)
    words = " ".join([*BRANDS[kind.category], kind.phrase, "30 day return policy backed by our the is and"]).lower()
    for attribute in kind.attributes:
        assert attribute not in words, attribute


def test_goals_ask_for_what_their_product_has():
    catalog = build_catalog(0, 300)
    for product in catalog.products[:100]:
        goal = goal_for(0, product)
        assert goal == goal_for(0, product)
        assert set(goal.attributes) <= set(product.attributes) and 1 <= len(goal.attributes) <= 2
        assert dict(goal.options).keys() == dict(product.options).keys()
        assert all(value in dict(product.options)[name] for name, value in goal.options)
        assert product.price < goal.price_upper <= product.price + 40
        assert f"price lower than {goal.price_upper:.2f} dollars" in goal.instruction
        assert product.kind.phrase in goal.instruction


def test_splits_are_disjoint_complete_and_deterministic():
    source = ShopTasks(seed=0, num_products=3000, test_fraction=0.2)
    train, test = source.tasks("train"), source.tasks("test")
    assert (len(train), len(test)) == (2377, 623)
    assert not {t.params["asin"] for t in train} & {t.params["asin"] for t in test}
    assert len({t.task_id for t in train + test}) == 3000
    assert ShopTasks(seed=0, num_products=3000).tasks("test", 5) == test[:5]
    assert ShopTasks(seed=1, num_products=3000).tasks("test", 5) != test[:5]


def test_task_source_rejects_bad_requests_by_name():
    source = ShopTasks(seed=0, num_products=100)
    with pytest.raises(ValueError, match="split"):
        source.tasks("valid", 1)
    with pytest.raises(ValueError, match="env.num_products=100"):
        source.tasks("test", 10_000)
    with pytest.raises(ValueError, match="test_fraction"):
        ShopTasks(test_fraction=1.0)
    with pytest.raises(ValueError, match="not a shop task"):
        goal_of(Task("x", "test", {"seed": 0}))
    with pytest.raises(ValueError, match="not in catalogue"):
        goal_of(Task("x", "test", {"seed": 0, "num_products": 100, "asin": "B0NOTHERE0"}))


def test_search_ranks_matching_products_first_and_ignores_plurals_and_case():
    catalog = build_catalog(0, 3000)
    found = catalog.search("Waterproof HIKING boot")
    assert len(found) == SEARCH_RETURN_N
    top = [catalog.by_asin[asin] for asin in found[:10]]
    assert all(product.kind.query == "hiking boots" and "waterproof" in product.attributes for product in top)
    assert catalog.search("waterproof hiking boots") == found
    assert catalog.search("the and of") == ()
    assert tokenize("Men's T-Shirts, 12oz!") == ["men", "shirt", "12oz"]
