"""`leafe view`: the static page renders in a real headless browser."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from leafe.policy.base import SamplingParams
from leafe.prompting import Prompter
from leafe.rollout import make_jobs, run_episodes
from leafe.runs import append_jsonl
from leafe.types import Task
from leafe.viewer import episodes_payload, rollouts_payload, write_view
from tests.line_world import LineWorld, SnapshotLineWorld
from tests.test_rollout import ScriptedPolicy

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _run_dir(tmp_path):
    tasks = [Task(f"line/{goal}", "test", {"goal": goal}) for goal in (1, 2)]
    script = ["hmm </script><b>bold</b>", " go\nAction: right"]
    for trajectory in run_episodes(make_jobs(tasks, 3, 0), LineWorld, ScriptedPolicy(script), Prompter(), SamplingParams(), max_steps=3):
        append_jsonl(tmp_path / "episodes.jsonl", trajectory.to_dict())
    return tmp_path


def test_payload_groups_by_task(tmp_path):
    from leafe.runs import read_jsonl

    payload = episodes_payload(read_jsonl(_run_dir(tmp_path) / "episodes.jsonl"))
    assert [task["task_id"] for task in payload] == ["line/1", "line/2"]
    assert [e["sample_index"] for e in payload[0]["episodes"]] == [0, 1, 2]
    assert [len(e["steps"]) for e in payload[0]["episodes"]] == [2, 2, 2]
    assert [len(e["steps"]) for e in payload[1]["episodes"]] == [3, 3, 3]
    assert "prompt" not in payload[0]["episodes"][0]["steps"][0]


def test_a_pipeline_directory_gets_an_index_of_its_stages(tmp_path):
    for stage in ("eval-base", "round-1/eval", "round-1/data"):
        (tmp_path / stage).mkdir(parents=True)
    _run_dir(tmp_path / "eval-base")
    _run_dir(tmp_path / "round-1" / "eval")
    index = write_view(tmp_path)
    assert index == tmp_path / "view.html"
    text = index.read_text()
    assert 'href="eval-base/view.html"' in text and 'href="round-1/eval/view.html"' in text and "round-1/data" not in text
    assert (tmp_path / "round-1" / "eval" / "view.html").is_file()


def test_a_grpo_directory_shows_each_steps_groups(tmp_path):
    from leafe.runs import read_jsonl

    (tmp_path / "episodes").mkdir()
    (tmp_path / "grpo").mkdir()
    records = list(read_jsonl(_run_dir(tmp_path / "episodes") / "episodes.jsonl"))
    for step in (2, 10):  # in step order, not in the order of the labels' text
        for record in records:
            append_jsonl(tmp_path / "grpo" / "rollouts.jsonl", {"step": step, "advantage": 0.5, **record})
    page = write_view(tmp_path / "grpo")
    assert page == tmp_path / "grpo" / "view.html" and "step 10 / line/1" in page.read_text()
    payload = rollouts_payload(read_jsonl(tmp_path / "grpo" / "rollouts.jsonl"))
    assert [task["task_id"] for task in payload] == ["step 2 / line/1", "step 2 / line/2", "step 10 / line/1", "step 10 / line/2"]
    assert all([e["sample_index"] for e in task["episodes"]] == [0, 1, 2] for task in payload)
    index = write_view(tmp_path).read_text()  # e.g. bench/baselines.sh's folder of runs
    assert 'href="grpo/view.html">grpo</a>: GRPO rollouts' in index and 'href="episodes/view.html"' in index


def test_missing_episodes_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no episodes.jsonl, trees.jsonl, rollouts.jsonl or states.jsonl"):
        write_view(tmp_path)


needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not installed (CI installs it)")


def _rendered_dom(page, tmp_path) -> str:
    """The page's DOM after its scripts ran, from a real headless Chromium."""
    assert CHROMIUM is not None, "CI must install chromium (see .ci/run)"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert "<main" in result.stdout, result.stderr[-2000:]
    return result.stdout


@needs_chromium
def test_tree_page_shows_why_each_branch_exists(tmp_path):
    from leafe.envs.sokoban import SokobanEnv, SokobanTasks
    from leafe.envs.sokoban_diagnosis import diagnose
    from leafe.method.explore import Agent, ExploreSettings, explore
    from leafe.method.reflect import EnvReflector
    from tests.method.scripted import deadlock_path, sokoban_policy

    task = next(t for t in SokobanTasks().tasks("train", 10) if len(deadlock_path(t)) >= 3)
    agent = Agent(SokobanEnv, sokoban_policy(task, deadlock_path(task)), Prompter(history_window=2), SamplingParams(), max_steps=20)
    settings = ExploreSettings(reflector="env", reflect_every=50, max_branches_per_node=1, restart=False)
    (tree,) = explore([task], agent, EnvReflector(diagnose), settings, seed=0)
    append_jsonl(tmp_path / "trees.jsonl", tree.to_dict())

    dom = _rendered_dom(write_view(tmp_path), tmp_path)
    assert dom.count('data-tree="') == 1 and dom.count('data-node="') == 2
    assert 'class="node fail"' in dom and 'class="node success"' in dom
    assert "Why this branch" in dom and "env reflection on node 0" in dom
    assert tree.nodes[0].reflections[0].experience_summary.split(";")[0] in dom


@needs_chromium
def test_page_renders_in_headless_chromium(tmp_path):
    dom = _rendered_dom(write_view(_run_dir(tmp_path)), tmp_path)
    assert dom.count('data-task="') == 2
    assert dom.count('class="episode"') == 3  # the first task is shown
    assert "3/3 solved" in dom and "line/1" in dom
    assert "hmm &lt;/script&gt;&lt;b&gt;bold" in dom  # model text is shown as text...
    assert "<b>bold</b>" not in dom  # ...never as markup


@needs_chromium
def test_a_grpo_page_shows_each_episodes_advantage(tmp_path):
    from leafe.runs import read_jsonl

    (tmp_path / "episodes").mkdir()
    (tmp_path / "grpo").mkdir()
    for index, record in enumerate(read_jsonl(_run_dir(tmp_path / "episodes") / "episodes.jsonl")):
        append_jsonl(tmp_path / "grpo" / "rollouts.jsonl", {"step": 1, "advantage": 0.5 - index, **record})
    dom = _rendered_dom(write_view(tmp_path / "grpo"), tmp_path / "grpo")
    assert "step 1 / line/1" in dom and "(advantage +0.50)" in dom and "(advantage -0.50)" in dom


@needs_chromium
def test_an_early_experience_page_shows_each_state_with_its_alternatives(tmp_path):
    from tests.method.test_early_experience import _collect

    per_task, cost, _ = _collect(SnapshotLineWorld, variant="sr")
    record = {"tasks": ["line/train/0", "line/train/1"], "states": [[s.to_dict() for s in states] for states in per_task],
              "cost": cost.__dict__, "seconds": 0.0}
    append_jsonl(tmp_path / "states.jsonl", record)
    dom = _rendered_dom(write_view(tmp_path), tmp_path)
    assert dom.count('data-states="') == 2 and dom.count('data-state="') == 2  # line/train/0: goal 2, two expert turns
    assert "Early Experience states" in dom and "expert turn 2" in dom
    assert '<span class="action">right</span>' in dom and '<span class="action">jump</span>' in dom and ">invalid<" in dom
    assert "Rationale: " in dom and per_task[0][0].rationale in dom
