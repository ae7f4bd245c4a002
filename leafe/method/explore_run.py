"""``leafe explore``: run one exploration method over a split's tasks into a run directory.

    runs/<name>/trees.jsonl           one experience tree per task, appended as tasks finish
    runs/<name>/explore_summary.json  totals (coverage, successes per 1k env steps, spend, ...)
    runs/<name>/explore_summary.md    the same as a short Markdown report
    runs/<name>/view.html             the trees, browsable (``leafe view`` rewrites it)

A killed run resumes at the next unexplored task (finished trees are read back and skipped).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from functools import partial

from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from leafe.agent import Agent
from leafe.config import ExperimentConfig
from leafe.method.explore import make_reflector, run_method
from leafe.method.tree import ExplorationSummary, ExperienceTree, load_trees, summarize
from leafe.policy.base import Policy
from leafe.runs import RunDir, write_atomic
from leafe.types import Task

logger = logging.getLogger(__name__)

TREES_FILE = "trees.jsonl"


def run_exploration(
    cfg: ExperimentConfig, run: RunDir, agent: Agent, tasks: Sequence[Task], reflector_policy: Policy | None = None
) -> ExplorationSummary:
    """Explore the missing ones of ``tasks`` with ``cfg.explore``, then write the summary files.

    With ``workers.num > 1`` the tasks are explored on Ray workers (:mod:`leafe.workers`), and
    ``agent.policy`` and ``reflector_policy`` are not used."""
    section = cfg.explore
    settings = section  # an ExploreConfig is the ExploreSettings plus which tasks and method
    trees_file = run.path / TREES_FILE
    wanted = {task.task_id for task in tasks}
    earlier = [tree for task_id, tree in load_trees(trees_file).items() if task_id in wanted]
    solved = sum(tree.summary().solved for tree in earlier)  # tasks solved so far, shown on the bar
    distributed = cfg.workers.num > 1  # each Ray worker builds its own policy and reflector
    reflector = None if section.method == "independent" or distributed else make_reflector(settings, agent, reflector_policy)
    explorer = None
    if distributed:
        from leafe.workers import explore_on_workers

        explorer = partial(explore_on_workers, cfg)
    with tqdm(total=len(tasks), initial=len(earlier), desc=f"explore ({section.method})", unit="task") as bar:
        bar.set_postfix(solved=solved)

        def finished(tree: ExperienceTree) -> None:
            nonlocal solved
            solved += tree.summary().solved
            bar.update(1)
            bar.set_postfix(solved=solved)

        trees = run_method(
            section.method, tasks, agent, settings, cfg.seed, trees_file, reflector=reflector, on_tree=finished, explorer=explorer
        )
    summary = summarize(trees)
    _write_summary(cfg, run, summary)
    return summary


def _write_summary(cfg: ExperimentConfig, run: RunDir, summary: ExplorationSummary) -> None:
    numbers = dataclasses.asdict(summary)
    settings = cfg.explore.model_dump(mode="json")
    write_atomic(run.path / "explore_summary.json", json.dumps({"summary": numbers, "explore": settings}, indent=2) + "\n")
    lines = [
        f"# {cfg.name}: {cfg.explore.method} exploration of {cfg.policy.model} on {cfg.env.name} ({cfg.explore.split})",
        "",
        "| metric | value |",
        "|---|---:|",
        *[f"| {key} | {_format(value)} |" for key, value in numbers.items()],
        "",
        "Settings: " + ", ".join(f"{key}={value}" for key, value in settings.items()),
        "",
        "Trees: `trees.jsonl`; browse them in `view.html` (`leafe view` rewrites it).",
        "",
    ]
    write_atomic(run.path / "explore_summary.md", "\n".join(lines))
    table = Table(title=f"{cfg.explore.method} exploration ({summary.reflector or 'no'} reflector)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in numbers.items():
        table.add_row(key, _format(value))
    Console().print(table)
    logger.info("explore done: %s", numbers)


def _format(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
