"""Text environments behind one contract (see :mod:`leafe.envs.base`)."""

from __future__ import annotations

from collections.abc import Callable

from leafe.config import SokobanConfig
from leafe.envs.base import TaskSource, TextEnv


def build_env(cfg: SokobanConfig) -> tuple[Callable[[], TextEnv], TaskSource]:
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
    raise ValueError(f"env.name: unknown environment {cfg.name!r}")
