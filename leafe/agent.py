"""What plays an episode (environment, policy, prompt format, sampling, step limit), built from
a config, and the task lists commands play.

The worked example in the prompt comes from the expert demonstration of one reserved train room
(``EXAMPLE_TASK``); :func:`select_tasks` never hands that room out, so no task is played with its
own solution in the prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from leafe.config import ConfigError, ExperimentConfig
from leafe.envs.base import TaskSource, TextEnv, action_format
from leafe.policy.base import Policy, SamplingParams
from leafe.prompting import Prompter, example_from_expert
from leafe.types import Task

EXAMPLE_TASK = ("train", 0)  # (split, index) of the room whose demonstration is the worked example


@dataclass(frozen=True)
class Agent:
    """What plays an episode: environment factory, policy, prompt format, sampling, step limit.

    ``max_steps`` is the per-episode interaction budget; an exploration branch's limit counts the
    turns it took over from its parent, so every full history fits the same budget.
    """

    make_env: Callable[[], TextEnv]
    policy: Policy
    prompter: Prompter
    sampling: SamplingParams
    max_steps: int


def _example_task(task_source: TaskSource) -> Task:
    split, index = EXAMPLE_TASK
    return task_source.tasks(split, index + 1)[index]


def build_prompter(cfg: ExperimentConfig, make_env: Callable[[], TextEnv], task_source: TaskSource) -> Prompter:
    """The prompt format of ``cfg.rollout`` (with its worked example when ``few_shot``)."""
    env = make_env()
    actions = action_format(env)
    example = example_from_expert(env, _example_task(task_source), actions) if cfg.rollout.few_shot else None
    return Prompter(
        prompt_format=cfg.rollout.prompt_format, history_window=cfg.rollout.history_window, example=example,
        action_format=actions,
    )


def build_agent(cfg: ExperimentConfig, make_env: Callable[[], TextEnv], task_source: TaskSource, policy: Policy) -> Agent:
    """The agent of ``cfg.rollout`` and ``cfg.policy`` (sampling) around ``policy``."""
    return Agent(
        make_env=make_env,
        policy=policy,
        prompter=build_prompter(cfg, make_env, task_source),
        sampling=SamplingParams(
            temperature=cfg.policy.temperature, top_p=cfg.policy.top_p, max_new_tokens=cfg.policy.max_new_tokens
        ),
        max_steps=cfg.rollout.max_steps,
    )


def select_tasks(task_source: TaskSource, split: str, count: int, field: str = "") -> list[Task]:
    """The first ``count`` tasks of ``split``, skipping the worked example's room.

    Raises:
        ConfigError: the environment settings cannot produce that many tasks (names ``field``,
            the setting that asked for ``count``, e.g. ``eval.num_tasks``, and the env section).
    """
    reserved = EXAMPLE_TASK[1] + 1 if split == EXAMPLE_TASK[0] else 0
    try:
        tasks = task_source.tasks(split, count + reserved)
    except (RuntimeError, ValueError) as error:
        where = f"{field}: cannot make {count} {split} tasks with these env settings" if field else \
            f"env: cannot make {count} {split} tasks with these settings"
        raise ConfigError(f"{where}: {error}") from None
    return tasks[reserved:]
