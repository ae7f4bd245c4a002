"""The embedded shop environment: contract, page flow, expert, snapshots, feedback, diagnosis,
config and registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from leafe.config import ConfigError, config_from_dict, load_config
from leafe.envs import build_env
from leafe.envs.checker import check_env
from leafe.envs.shop import ShopEnv
from leafe.envs.shop_catalog import ShopTasks, goal_of
from leafe.envs.shop_expert import fitting_values

SOURCE = ShopTasks(seed=0, num_products=3000)


def _task(split="test", index=0):
    return SOURCE.tasks(split, index + 1)[index]


def test_check_env_passes_on_both_splits():
    report = check_env(lambda: ShopEnv(page_size=5), SOURCE.tasks("train", 4) + SOURCE.tasks("test", 4))
    assert report.tasks_checked == 8 and report.snapshot_checked and report.experts_checked == 8


def test_every_expert_demonstration_scores_one():
    env = ShopEnv(page_size=5)
    for task in SOURCE.tasks("test", 120):
        env.reset(task)
        rewards = [env.step(action)[1:3] for action in env.expert_actions(task)]
        assert rewards[-1] == (1.0, True), task
        assert all(reward == 0.0 and not done for reward, done in rewards[:-1])


def test_page_flow_search_results_item_detail_done():
    env = ShopEnv(page_size=5)
    obs, info = env.reset(_task())
    catalog, goal = goal_of(_task())
    assert obs.startswith("[Search page]") and goal.instruction in info["instruction"]
    obs, *_ = env.step("search[phone case]")
    assert obs.startswith('[Results for "phone case"] page 1 of 10 (50 results)')
    assert "Buttons: back to search, next >" in obs and "< prev" not in obs
    first = catalog.search("phone case")[0]
    obs, *_ = env.step("click[Next]")  # arrows and case do not matter
    assert "page 2 of 10" in obs and "back to search, < prev, next >" in obs and first not in obs
    obs, *_ = env.step("click[< prev]")
    assert first in obs
    obs, *_ = env.step(f"click[{first.lower()}]")
    product = catalog.by_asin[first]
    assert obs.startswith(f"[Item {first}] {product.title}") and f"Price: ${product.price:.2f}" in obs
    name, values = product.options[0]
    obs, *_ = env.step(f"click[{values[-1]}]")
    assert f"(chosen: {values[-1]})" in obs
    obs, *_ = env.step("click[features]")
    assert obs.startswith(f"[Features of {first}]") and product.features[0] in obs
    obs, *_ = env.step("click[< prev]")
    assert f"(chosen: {values[-1]})" in obs  # the choice survives a visit to a detail page
    obs, reward, terminated, truncated, info = env.step("click[buy now]")
    assert terminated and not truncated and obs.startswith(f"[Done] You bought {first}")
    assert f"{name} {values[-1]}" in obs and f"Your score (min 0.0, max 1.0): {reward:.2f}" in obs
    assert info["score"]["options"][1] == len(goal.options)
    with pytest.raises(RuntimeError, match="terminated"):
        env.step("click[back to search]")


def test_back_to_search_and_title_clicks():
    env = ShopEnv()
    env.reset(_task())
    obs, *_ = env.step("search[wool socks]")
    catalog, _ = goal_of(_task())
    product = catalog.by_asin[catalog.search("wool socks")[1]]
    obs, *_ = env.step(f"click[{product.title}]")  # a product's exact title names it too
    assert obs.startswith(f"[Item {product.asin}]")
    obs, *_ = env.step("click[back to search]")
    assert obs.startswith("[Search page]")


def test_partial_credit_when_options_are_not_chosen():
    env = ShopEnv()
    task = _task("test", 3)
    env.reset(task)
    plan = env.expert_actions(task)
    for action in plan[:2]:
        env.step(action)
    _, reward, terminated, _, info = env.step("click[buy now]")
    _, goal = goal_of(task)
    parts = len(goal.attributes) + len(goal.options) + 1
    assert terminated and not info["success"]
    assert reward == pytest.approx((parts - len(goal.options)) / parts)


def test_invalid_actions_change_nothing_and_say_what_is_clickable():
    env = ShopEnv(page_size=5)
    task = _task()
    start, _ = env.reset(task)
    obs, reward, terminated, _, info = env.step("click[xyz]")
    assert info["invalid_action"] and reward == 0.0 and not terminated
    assert "click[xyz] is not a clickable button here" in obs and "type search[keywords]" in obs
    obs, *_ = env.step("buy the shirt")
    assert "'buy the shirt' is not an action" in obs
    assert env.page().kind == "search"
    results, *_ = env.step("search[phone case]")
    obs, _, _, _, info = env.step("search[red shirt]")
    assert info["invalid_action"] and "search works on the search page only" in obs and "click[back to search]" in obs
    obs, *_ = env.step("click[buy now]")
    assert "Clickable: back to search, next >, b0" in obs
    assert env.step("click[next >]")[0] != results  # the state was untouched by the invalid ones


def test_snapshot_restore_is_exact_and_reusable():
    env = ShopEnv()
    task = _task("train", 2)
    env.reset(task)
    plan = env.expert_actions(task)
    env.step(plan[0])
    snapshot = env.snapshot()
    continuation = [env.step(action) for action in plan[1:]]
    other = ShopEnv()
    for target in (env, env, other):
        target.restore(snapshot)
        assert [target.step(action) for action in plan[1:]] == continuation
    with pytest.raises(TypeError, match="ShopSnapshot"):
        env.restore("state")


def test_diagnose_points_at_the_first_turn_that_left_a_fitting_purchase():
    env = ShopEnv(page_size=5)
    task = _task("test", 1)
    catalog, goal = goal_of(task)
    plan = env.expert_actions(task)
    assert env.diagnose(task, plan) is None
    bad_search = env.diagnose(task, ["search[zzz qqq]", "click[next >]"])
    assert bad_search.rollback_step == 1 and f"Instead: {plan[0]}" in bad_search.summary
    assert env.diagnose(task, [plan[0], None]).rollback_step == 2
    wrong_product = next(a for a in catalog.search(plan[0][7:-1]) if fitting_values(catalog.by_asin[a], goal) is None)
    diagnosis = env.diagnose(task, [plan[0], "click[next >]", "click[< prev]", f"click[{wrong_product}]"])
    assert diagnosis.rollback_step == 2  # paging away from a fitting product is the first detour
    early_buy = env.diagnose(task, [*plan[:2], "click[buy now]"])
    assert early_buy.rollback_step == 3 and "buying scored" in early_buy.summary and plan[2] in early_buy.summary


def test_quickstart_config_builds_the_shop():
    cfg = load_config("configs/shop_quickstart.yaml")
    make_env, tasks = build_env(cfg.env)
    env = make_env()
    assert isinstance(env, ShopEnv) and env.page_size == 5
    assert len(tasks.tasks("test")) == 623


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="env.num_products"):
        config_from_dict({"env": {"name": "shop", "num_products": 3}})
    with pytest.raises(ConfigError, match="env.page_sise: unknown field \\(did you mean 'page_size'\\?\\)"):
        config_from_dict({"env": {"name": "shop", "page_sise": 3}})
    with pytest.raises(ConfigError, match="env.train_start"):
        config_from_dict({"env": {"name": "webshop", "num_goals": 100, "train_start": 100}})
    with pytest.raises(ConfigError, match="env.base_url"):
        config_from_dict({"env": {"name": "webshop", "base_url": "localhost:3000"}})


def test_a_missing_search_package_is_named_with_its_install_command(monkeypatch):
    import leafe.envs

    real = leafe.envs.importlib.util.find_spec
    monkeypatch.setattr(leafe.envs.importlib.util, "find_spec", lambda name: None if name == "rank_bm25" else real(name))
    with pytest.raises(ConfigError, match=r"env.name: 'shop' needs the 'rank_bm25' package.*leafe\[shop\]"):
        build_env(config_from_dict({"env": {"name": "shop"}}).env)


PROBE = """
import sys
from leafe.config import config_from_dict
from leafe.envs import build_env
make_env, tasks = build_env(config_from_dict({"env": %s}).env)
make_env()
print(sorted(m for m in ("leafe.envs.shop", "leafe.envs.webshop", "leafe.envs.sokoban", "leafe.envs.coding", "rank_bm25", "rapidfuzz", "textworld") if m in sys.modules))
"""


@pytest.mark.parametrize(
    ("env", "loaded"),
    [
        ('{"name": "shop"}', "['leafe.envs.shop', 'rapidfuzz']"),
        ('{"name": "webshop"}', "['leafe.envs.webshop']"),
        ("{}", "['leafe.envs.sokoban']"),
    ],
)
def test_registry_imports_only_the_environment_in_use(env, loaded):
    result = subprocess.run([sys.executable, "-c", PROBE % env], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == loaded


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("search[Red Mug]", ("search", "Red Mug")),
        ("click[Buy Now].", ("click", "buy now")),
        ("click [ Next > ]", ("click", "next >")),
        ("search[red mug] to search the shop.", ("search", "red mug")),
        ("click[buy now", ("click", "buy now")),
        ("click[b0abc] and click[red]", ("click", "b0abc")),
        ("search[]", None),
        ("buy it", None),
        ("", None),
    ],
)
def test_action_syntax(text, parsed):
    from leafe.envs.shop_pages import parse_action

    assert parse_action(text) == parsed
