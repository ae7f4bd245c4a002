"""``leafe view RUN_DIR``: one static HTML page showing what the agent did.

The page is self-contained (inline CSS, JS and data; no server, no network): open it from disk.
For an evaluation run (``episodes.jsonl``) it lists every task's episodes with their outcome (a
GRPO run's ``rollouts.jsonl``: every update step's groups); for Early Experience
(``states.jsonl``) every expert state with the alternatives tried there and the rationale;
for an exploration run (``trees.jsonl``) it draws every task's experience tree: each branch
under its parent, headed by the reflection that created it (rollback step, experience summary,
reflector), so it is clear at a glance why a branch exists and how it ended. For every step it
shows the model's reply, the parsed action and the environment's answer. Prompts are left out
(they are in the JSONL files): the page shows what happened, not what the model was fed.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from leafe.config import ConfigError
from leafe.runs import read_jsonl, write_atomic

PAGE_FILE = "view.html"
# What the page is made from: leafe eval, leafe explore (and Reflexion), leafe grpo, leafe early-experience.
RECORD_FILES = ("episodes.jsonl", "trees.jsonl", "rollouts.jsonl", "states.jsonl")


def _step_view(step: dict[str, Any]) -> dict[str, Any]:
    info = step.get("info", {})
    return {
        "reply": step["completion"],
        "action": step["action"],
        "observation": step["observation"],
        "reward": step["reward"],
        "terminated": step["terminated"],
        "truncated": step["truncated"],
        "tokens": step["prompt_tokens"] + step["completion_tokens"],
        "flags": sorted(key for key in ("parse_error", "invalid_action", "deadlock") if info.get(key)),
    }


def episodes_payload(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group trajectory records (``Trajectory.to_dict()``) by task, for the page.

    Returns a list of ``{"task_id", "instruction", "initial_observation", "episodes": [...]}``,
    tasks sorted by id, episodes by sample index.
    """
    tasks: dict[str, dict[str, Any]] = {}
    for record in records:
        task_id = record["task"]["task_id"]
        entry = tasks.setdefault(
            task_id,
            {
                "task_id": task_id,
                "instruction": record["instruction"],
                "initial_observation": record["initial_observation"],
                "episodes": [],
            },
        )
        episode = {
            "sample_index": record["sample_index"],
            "success": record["success"],
            "steps": [_step_view(step) for step in record["steps"]],
        }
        if "advantage" in record:  # a GRPO rollout: its group-relative advantage
            episode["advantage"] = record["advantage"]
        entry["episodes"].append(episode)
    for entry in tasks.values():
        entry["episodes"].sort(key=lambda episode: episode["sample_index"])
    return [tasks[task_id] for task_id in sorted(tasks)]


def rollouts_payload(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """GRPO's rollout records (``Trajectory.to_dict()`` plus ``step``) as :func:`episodes_payload`
    groups, one per update step and task, labelled ``"step 3 / <task id>"``; steps in order; each
    episode keeps its ``advantage``."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        task = {**record["task"], "task_id": f"step {record['step']} / {record['task']['task_id']}"}
        by_step.setdefault(record["step"], []).append({**record, "task": task})
    return [group for step in sorted(by_step) for group in episodes_payload(by_step[step])]


def _outcome_view(outcome: dict[str, Any]) -> dict[str, Any]:
    return {key: outcome[key] for key in ("action", "observation", "reward", "terminated", "invalid")}


def states_payload(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Early Experience's ``states.jsonl`` chunks (``ExpertState.to_dict()`` lists) as the page
    shows them: per task (by id), its expert states in turn order, each with the expert's action
    and outcome, the alternatives the policy tried there, and the rationale (``sr``)."""
    tasks: dict[str, dict[str, Any]] = {}
    for record in records:
        for states in record["states"]:
            for state in states:
                task_id = state["task"]["task_id"]
                entry = tasks.setdefault(task_id, {"task_id": task_id, "instruction": state["instruction"], "states": []})
                entry["states"].append(
                    {
                        "turn": state["turn"],
                        "observation": state["observation"],
                        "expert": _outcome_view(state["expert"]),
                        "alternatives": [_outcome_view(o) for o in state["alternatives"]],
                        "rationale": state["rationale"],
                    }
                )
    for entry in tasks.values():
        entry["states"].sort(key=lambda state: state["turn"])
    return [tasks[task_id] for task_id in sorted(tasks)]


def _reflection_view(reflection: dict[str, Any] | None) -> dict[str, Any] | None:
    if reflection is None:
        return None
    return {
        "rollback_step": reflection["rollback_step"],
        "summary": reflection["experience_summary"],
        "reflector": reflection["reflector"],
        "at_step": reflection["at_step"],
        "trigger": reflection.get("trigger", ""),
    }


def trees_payload(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Experience-tree records (``ExperienceTree.to_dict()``) as the page shows them, by task id."""
    tasks = []
    for record in records:
        nodes = [
            {
                "id": node["node_id"],
                "parent": node["parent_id"],
                "depth": node["depth"],
                "outcome": node["outcome"],
                "prefix_length": node["prefix_length"],
                "rollback": node["rollback"],
                "replay_mismatch": node["replay_mismatch"],
                "spawned_by": _reflection_view(node["spawned_by"]),
                "reflections": [_reflection_view(r) for r in node.get("reflections", [])],
                "steps": [_step_view(step) for step in node["steps"]],
            }
            for node in record["nodes"]
        ]
        tasks.append(
            {
                "task_id": record["task"]["task_id"],
                "instruction": record["instruction"],
                "initial_observation": record["initial_observation"],
                "method": record["method"],
                "reflector": record["reflector"],
                "nodes": nodes,
            }
        )
    return sorted(tasks, key=lambda task: task["task_id"])


def render_page(title: str, payload: dict[str, Any]) -> str:
    """The HTML page with ``payload`` embedded as JSON (safe inside a ``<script>`` element)."""
    template = resources.files("leafe").joinpath("viewer_template.html").read_text()
    data = json.dumps(payload).replace("</", "<\\/")
    return template.replace("__TITLE__", json.dumps(title)[1:-1].replace("<", "&lt;")).replace("__DATA__", data)


def write_view(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/view.html`` from the run's ``episodes.jsonl`` (``leafe eval``),
    ``trees.jsonl`` (``leafe explore``, Reflexion), ``rollouts.jsonl`` (``leafe grpo``) or
    ``states.jsonl`` (``leafe early-experience``); return its path.

    For a ``leafe run`` directory (stages in subdirectories) it writes one page per stage and an
    index page linking them (:func:`write_index`), and returns the index.

    Raises:
        FileNotFoundError: ``run_dir`` has none of these files (names the directory).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} {'is a file' if run_dir.exists() else 'does not exist'}; pass a run directory "
                                "(e.g. runs/sokoban-quickstart)")
    episodes_file, trees_file, rollouts_file, states_file = (run_dir / name for name in RECORD_FILES)
    if not any(path.exists() for path in (episodes_file, trees_file, rollouts_file, states_file)):
        stages = sub_runs(run_dir)
        if stages:
            return write_index(run_dir, stages)
        raise FileNotFoundError(
            f"{run_dir} has no {', '.join(RECORD_FILES[:-1])} or {RECORD_FILES[-1]}: is it a leafe eval, explore, run, "
            "grpo or early-experience directory?"
        )
    payload = {
        "run": run_dir.name,
        "tasks": _read(episodes_payload, episodes_file) + _read(rollouts_payload, rollouts_file),
        "trees": _read(trees_payload, trees_file),
        "states": _read(states_payload, states_file),
    }
    page = render_page(f"leafe run {run_dir.name}", payload)
    out = run_dir / PAGE_FILE
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; leafe view writes its page there (move the folder away)")
    write_atomic(out, page)
    return out


def _read(payload: Callable[[Iterable[dict[str, Any]]], list[dict[str, Any]]], path: Path) -> list[dict[str, Any]]:
    """``payload`` of the records in ``path``.

    Raises:
        ConfigError: a record lacks what leafe writes (names the file).
    """
    try:
        return payload(read_jsonl(path))
    except ConfigError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ConfigError(f"{path}: a record is not one leafe wrote ({type(error).__name__}: {error}); was the file edited?") from None


def sub_runs(run_dir: Path) -> list[Path]:
    """Subdirectories of ``run_dir`` (any depth) holding any of :data:`RECORD_FILES`, in path order."""
    found = {path.parent for name in RECORD_FILES for path in run_dir.rglob(name)}
    return sorted(found)


def _stage_kind(stage: Path) -> str:
    kinds = dict(zip(RECORD_FILES, ("evaluation episodes", "experience trees", "GRPO rollouts", "Early Experience states")))
    return next(kind for name, kind in kinds.items() if (stage / name).exists())


def write_index(run_dir: Path, stages: Iterable[Path]) -> Path:
    """A page per stage of a ``leafe run`` directory, and ``RUN_DIR/view.html`` linking them."""
    items = []
    for stage in stages:
        page = write_view(stage)
        label = html.escape(str(stage.relative_to(run_dir)))
        kind = _stage_kind(stage)
        items.append(f'<li><a href="{html.escape(page.relative_to(run_dir).as_posix())}">{label}</a>: {kind}</li>')
    report = '<p><a href="report.md">report.md</a> &middot; <img alt="Pass@k" src="passk.png" style="max-width:100%"></p>' if (run_dir / "passk.png").exists() else ""
    title = html.escape(f"leafe run {run_dir.name}")
    page = (
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
        f"<body style=\"font-family:sans-serif;max-width:60em;margin:2em auto\"><main><h1>{title}</h1>"
        f"<ul id=\"stages\">{''.join(items)}</ul>{report}</main></body></html>\n"
    )
    out = run_dir / PAGE_FILE
    write_atomic(out, page)
    return out
