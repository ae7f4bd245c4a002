"""``leafe view RUN_DIR``: one static HTML page showing what the agent did.

The page is self-contained (inline CSS, JS and data; no server, no network): open it from disk.
For every task it lists the episodes with their outcome, and for every step the model's reply,
the parsed action and the environment's answer. Prompts are left out (they are in
``episodes.jsonl``): the page shows what happened, not what the model was fed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from leafe.runs import read_jsonl, write_atomic

PAGE_FILE = "view.html"


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
        entry["episodes"].append(
            {
                "sample_index": record["sample_index"],
                "success": record["success"],
                "steps": [_step_view(step) for step in record["steps"]],
            }
        )
    for entry in tasks.values():
        entry["episodes"].sort(key=lambda episode: episode["sample_index"])
    return [tasks[task_id] for task_id in sorted(tasks)]


def render_page(title: str, payload: dict[str, Any]) -> str:
    """The HTML page with ``payload`` embedded as JSON (safe inside a ``<script>`` element)."""
    template = resources.files("leafe").joinpath("viewer_template.html").read_text()
    data = json.dumps(payload).replace("</", "<\\/")
    return template.replace("__TITLE__", json.dumps(title)[1:-1].replace("<", "&lt;")).replace("__DATA__", data)


def write_view(run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/view.html`` from the run's ``episodes.jsonl`` and return its path.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``episodes.jsonl`` (names the directory).
    """
    run_dir = Path(run_dir)
    episodes_file = run_dir / "episodes.jsonl"
    if not episodes_file.exists():
        raise FileNotFoundError(f"{run_dir} has no episodes.jsonl: is it a leafe run directory?")
    tasks = episodes_payload(read_jsonl(episodes_file))
    page = render_page(f"leafe run {run_dir.name}", {"run": run_dir.name, "tasks": tasks})
    out = run_dir / PAGE_FILE
    write_atomic(out, page)
    return out
