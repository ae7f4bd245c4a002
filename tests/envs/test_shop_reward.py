"""WebShop's reward on hand-computed cases: partial credit, the type factor, fuzzy matching."""

from __future__ import annotations

import pytest

from leafe.envs.shop_reward import (
    RewardedProduct, RewardGoal, fuzzy_match, normalize_color, options_matched, purchase_reward, type_reward,
)

SHIRT = RewardedProduct(
    query="men's t-shirts", path="Clothing › Men › Shirts › T-Shirts", nouns=("acme", "men", "t", "shirt"),
    attributes=("cotton", "machine wash", "crew neck"), title="Acme Cotton Men's T-Shirt",
    features=("Cotton", "Machine Wash", "Crew Neck"), description="A cotton shirt. Slim fit cut.", price=20.0,
)
GOAL = RewardGoal(
    query="men's t-shirts", path="Clothing › Men › Shirts › T-Shirts", nouns=("acme", "men", "t", "shirt"),
    attributes=("cotton", "machine wash"), options=("red", "large"), price_upper=30.0,
)


def _product(**changes):
    return RewardedProduct(**{**SHIRT.__dict__, **changes})


def _goal(**changes):
    return RewardGoal(**{**GOAL.__dict__, **changes})


def test_everything_matched_scores_one():
    result = purchase_reward(SHIRT, GOAL, {"color": "red", "size": "large"})
    assert result.reward == 1.0 and result.success


def test_partial_credit_counts_attributes_options_and_price_over_their_total():
    # 2 attributes + 2 options + price = 5 parts.
    assert purchase_reward(SHIRT, GOAL, {"color": "red"}).reward == pytest.approx(4 / 5)
    assert purchase_reward(SHIRT, GOAL, {}).reward == pytest.approx(3 / 5)
    assert purchase_reward(_product(price=35.0), GOAL, {"color": "red", "size": "large"}).reward == pytest.approx(4 / 5)
    no_wash = _product(attributes=("cotton",), features=(), title="Acme Men's T-Shirt", description="")
    result = purchase_reward(no_wash, GOAL, {"color": "blue", "size": "large"})
    assert (result.attributes_matched, result.options_matched, result.price_ok) == (1, 1, True)
    assert result.reward == pytest.approx(3 / 5) and not result.success


def test_an_attribute_missing_from_the_list_counts_when_the_texts_mention_it():
    goal = _goal(attributes=("slim fit",), options=())
    assert purchase_reward(SHIRT, goal, {}).attributes_matched == 1  # in the description
    assert purchase_reward(_product(description=""), goal, {}).attributes_matched == 0


def test_type_factor_follows_webshop_thresholds():
    assert type_reward(SHIRT, GOAL) == 1.0
    # Another query, but two shared category levels (Clothing, Men): still the right type.
    hoodie = _product(query="men's hoodies", path="Clothing › Men › Hoodies", nouns=("acme", "hoodie"))
    assert type_reward(hoodie, GOAL) == 1.0
    # Other query and category; 1 of 4 goal nouns shared (0.25 > 0.2): right type.
    mug = _product(query="mugs", path="Home › Kitchen › Mugs", nouns=("acme", "mug"))
    assert type_reward(mug, GOAL) == 1.0
    # 1 of 5 shared (0.2, not above 0.2): half credit.
    five = _goal(nouns=("acme", "men", "t", "shirt", "tee"))
    assert type_reward(mug, five) == 0.5
    # 1 of 11 shared (< 0.1): 0.1; none shared: 0.
    eleven = _goal(nouns=("acme", *(f"n{i}" for i in range(10))))
    assert type_reward(mug, eleven) == 0.1
    assert type_reward(_product(query="mugs", path="Home › Kitchen › Mugs", nouns=("zeta", "mug")), GOAL) == 0.0


def test_type_factor_scales_the_whole_score():
    mug = _product(query="mugs", path="Home › Kitchen › Mugs", nouns=("acme", "mug"))
    five = _goal(nouns=("acme", "men", "t", "shirt", "tee"))
    assert purchase_reward(mug, five, {"color": "red", "size": "large"}).reward == pytest.approx(0.5)


def test_option_matching_is_webshops_fuzzy_token_set_match_after_colour_normalisation():
    assert normalize_color("bright red") == "red"
    assert normalize_color("navy blue") == "blue"  # the first colour of WebShop's list wins
    assert normalize_color("large") == "large"
    assert fuzzy_match("Large", "large")
    assert fuzzy_match("x-large", "large")  # a WebShop quirk: token sets, one a subset of the other
    assert not fuzzy_match("xl", "xxl")
    assert not fuzzy_match("short sleeve", "long sleeve")
    assert options_matched(["bright red", "xl"], ["red", "xxl"]) == 1
    assert options_matched(["red", "red"], ["red"]) == 1  # each goal option counts once


def test_goal_without_options_or_attributes_still_scores_price_and_type():
    result = purchase_reward(SHIRT, _goal(attributes=(), options=()), {})
    assert result.reward == 1.0
    assert purchase_reward(_product(price=31.0), _goal(attributes=(), options=()), {}).reward == 0.0
