"""The WebShop client against a local WebShop-shaped server (real HTTP on localhost)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from leafe.config import ConfigError, config_from_dict
from leafe.envs import build_env
from leafe.envs.checker import check_env
from leafe.envs.shop import ShopEnv
from leafe.envs.shop_catalog import build_catalog, goal_for
from leafe.envs.shop_expert import expert_plan
from leafe.envs.webshop import WebshopEnv, WebshopTasks, WebshopUnreachable, parse_html
from leafe.types import Task
from tests.envs.webshop_server import running_server

NUM_PRODUCTS = 200


@pytest.fixture(scope="module")
def base_url():
    with running_server(seed=0, num_products=NUM_PRODUCTS) as url:
        yield url


def _plan(index: int) -> list[str]:
    catalog = build_catalog(0, NUM_PRODUCTS)
    return expert_plan(catalog, goal_for(0, catalog.products[index]), page_size=10)


def _embedded_task(index: int) -> Task:
    asin = build_catalog(0, NUM_PRODUCTS).products[index].asin
    return Task("shop/x", "test", {"seed": 0, "num_products": NUM_PRODUCTS, "asin": asin})


def test_expert_purchases_score_one_through_the_server(base_url):
    env = WebshopEnv(base_url)
    for index in range(6):
        obs, info = env.reset(Task("w", "test", {"goal_index": index}))
        goal = goal_for(0, build_catalog(0, NUM_PRODUCTS).products[index])
        assert obs == f"[Search page] Instruction: {goal.instruction}\nType search[keywords] to search the shop."
        assert info["instruction"].endswith(f"Instruction: {goal.instruction}")
        results = [env.step(action) for action in _plan(index)]
        assert results[-1][1:3] == (1.0, True) and results[-1][4]["success"]
        assert "Your score (min 0.0, max 1.0): 1.00" in results[-1][0]


def test_server_scores_equal_the_embedded_shops_for_the_same_actions(base_url):
    client, embedded = WebshopEnv(base_url), ShopEnv(page_size=10)
    for index in range(4):
        plan = _plan(index)
        for actions in (plan[:2] + ["click[buy now]"], plan[:1] + ["click[next >]", "click[< prev]"] + plan[1:]):
            client.reset(Task("w", "test", {"goal_index": index}))
            embedded.reset(_embedded_task(index))
            ours = [embedded.step(a) for a in actions]
            theirs = [client.step(a) for a in actions]
            assert [r[1:3] for r in theirs] == [r[1:3] for r in ours]
            # Results and item pages read the same (the site adds a Reviews button and always shows Next >).
            assert theirs[1][0].split("\n")[1] == ours[1][0].split("\n")[1]


def test_page_flow_detail_pages_options_and_back(base_url):
    env = WebshopEnv(base_url)
    env.reset(Task("w", "test", {"goal_index": 2}))
    plan = _plan(2)
    env.step(plan[0])
    obs, *_ = env.step("click[next >]")
    assert " page 2 of " in obs and "Buttons: back to search, < prev, next >" in obs
    env.step("click[< prev]")
    obs, *_ = env.step(plan[1])
    catalog = build_catalog(0, NUM_PRODUCTS)
    product = catalog.by_asin[plan[1][6:-1].upper()]
    assert obs.startswith(f"[Item {product.asin}] {product.title}\nPrice: ${product.price:.2f}")
    name, values = product.options[0]
    obs, *_ = env.step(f"click[{values[0]}]")
    assert f"{name}: {', '.join(values)} (chosen: {values[0]})" in obs
    obs, *_ = env.step("click[description]")
    assert obs == f"[Description of {product.asin}]\n{product.description}\nButtons: back to search, < prev"
    obs, *_ = env.step("click[< prev]")
    assert f"(chosen: {values[0]})" in obs
    obs, *_ = env.step("click[back to search]")
    assert obs.startswith("[Search page]")
    obs, _, _, _, info = env.step("click[buy now]")
    assert info["invalid_action"] and "Nothing is clickable here" in obs


def test_check_env_and_snapshots(base_url):
    tasks = WebshopTasks(num_goals=NUM_PRODUCTS, test_goals=3, train_start=10)
    report = check_env(lambda: WebshopEnv(base_url), tasks.tasks("test") + tasks.tasks("train", 2))
    assert report.tasks_checked == 5 and report.snapshot_checked
    env = WebshopEnv(base_url)
    env.reset(Task("w", "test", {"goal_index": 1}))
    plan = _plan(1)
    env.step(plan[0])
    snapshot = env.snapshot()
    continuation = [env.step(action) for action in plan[1:]]
    for _ in range(2):
        env.restore(snapshot)
        assert [env.step(action) for action in plan[1:]] == continuation


def test_splits_follow_webshops_goal_ranges():
    tasks = WebshopTasks(num_goals=2000, test_goals=500, train_start=1500)
    test, train = tasks.tasks("test"), tasks.tasks("train")
    assert [t.params["goal_index"] for t in test] == list(range(500))
    assert [t.params["goal_index"] for t in train] == list(range(1500, 2000))
    with pytest.raises(ValueError, match="env.num_goals"):
        tasks.tasks("train", 501)
    make_env, source = build_env(config_from_dict({"env": {"name": "webshop", "num_goals": 2000}}).env)
    assert source.tasks("test", 3) == test[:3]


def test_an_unreachable_server_names_env_base_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    env = WebshopEnv(f"http://127.0.0.1:{port}", timeout_s=2.0)
    with pytest.raises(WebshopUnreachable, match=r"env.base_url: cannot reach a WebShop server at http://127.0.0.1:\d+"):
        env.reset(Task("w", "test", {"goal_index": 0}))


def test_a_silent_server_times_out_with_env_timeout_s():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    try:
        env = WebshopEnv(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(WebshopUnreachable, match="did not answer .* in time \\(env.timeout_s\\)"):
            env.reset(Task("w", "test", {"goal_index": 0}))
        assert time.monotonic() - start < 5
    finally:
        listener.close()
        for connection, _ in accepted:
            connection.close()


def test_a_goal_the_server_does_not_have_is_an_error_naming_num_goals(base_url):
    env = WebshopEnv(base_url)
    with pytest.raises(ConfigError, match="env.base_url: .*answered 404 .*env.num_goals"):
        env.reset(Task("w", "test", {"goal_index": NUM_PRODUCTS + 5}))


def test_parser_reads_a_page_shaped_like_webshops():
    page = """<html><head><style>.x{}</style></head><body>
      <div id="instruction-text" class="text-center"><h4>Instruction: <br>i need a red mug, price lower than 20.00 dollars</h4></div>
      <form><button type="submit" class="btn btn-success">Back to Search</button></form>
      <h3>Page 2 (Total results: 50)</h3>
      <form><button class="btn btn-primary">&lt; Prev</button></form>
      <div class="searched-product"><h4 class="product-asin"><a class="product-link" href="/x">B0TEST0001</a></h4>
        <h4 class="product-title">Acme Ceramic Coffee Mug &amp; Saucer</h4><h5 class="product-price">$12.50</h5></div>
      <div class="radio-toolbar"><input type="radio" name="color" value="red"><label>red</label>
        <input type="radio" name="color" value="blue"><label>blue</label></div>
      <h3 id="reward">Your score (min 0.0, max 1.0)<pre>0.6666666666666666</pre></h3>
      <script>var s = "<button>no</button>";</script></body></html>"""
    parsed = parse_html(page)
    assert parsed.instruction == "i need a red mug, price lower than 20.00 dollars"
    assert parsed.buttons == ("Back to Search", "< Prev")
    assert parsed.products == (("B0TEST0001", "Acme Ceramic Coffee Mug & Saucer", "$12.50"),)
    assert parsed.radios == (("color", "red"), ("color", "blue"))
    assert parsed.total == 50 and parsed.reward == pytest.approx(2 / 3)


def test_webshop_quickstart_config_reaches_the_server(base_url):
    from leafe.config import load_config

    cfg = load_config("configs/webshop_quickstart.yaml", [f"env.base_url={base_url}", f"env.num_goals={NUM_PRODUCTS}", "env.test_goals=50", "env.train_start=100"])
    make_env, source = build_env(cfg.env)
    obs, info = make_env().reset(source.tasks("train", 1)[0])
    assert source.tasks("train", 1)[0].params == {"goal_index": 100}
    assert obs.startswith("[Search page] Instruction: ") and goal_for(0, build_catalog(0, NUM_PRODUCTS).products[100]).instruction in obs
