"""The experience tree: JSON round trip, full histories, summaries, the trees file."""

import json

import pytest

from leafe.method.explore import Agent, ExploreSettings, explore
from leafe.method.reflect import EnvReflector
from leafe.method.tree import ExperienceTree, load_trees, summarize
from leafe.policy.base import SamplingParams
from leafe.prompting import Prompter
from leafe.runs import append_jsonl
from leafe.types import Task
from tests.line_world import TrapLineWorld
from tests.method.scripted import line_policy


@pytest.fixture(scope="module")
def tree():
    agent = Agent(TrapLineWorld, line_policy(["right", "left", "left"]), Prompter(history_window=20), SamplingParams(), 6)
    settings = ExploreSettings(reflector="env", max_branches_per_node=2, restart=False)
    (tree,) = explore([Task("line/2", "train", {"goal": 2})], agent, EnvReflector(TrapLineWorld().diagnose), settings, seed=3)
    return tree


def test_round_trip_through_json(tree):
    data = json.loads(json.dumps(tree.to_dict()))
    assert ExperienceTree.from_dict(data) == tree
    assert data["summary"]["solved"] is True
    node = data["nodes"][1]
    assert node["spawned_by"]["reflector"] == "env" and node["prefix_actions"] == ["right", "left"]


def test_history_and_trajectory_of_a_branch(tree):
    root, branch = tree.nodes[0], tree.nodes[1]
    assert branch.parent_id == 0 and branch.prefix_length == 2 and branch.spawned_by.rollback_step == 3
    assert tree.history(1) == root.steps[:2] + branch.steps
    trajectory = tree.trajectory(1)
    assert trajectory.actions == ["right", "left", "right", "right"] and trajectory.success
    assert trajectory.sample_index == 1 and trajectory.seed == branch.seed
    assert trajectory.initial_observation == "You are at 0." and trajectory.instruction == "Reach 2."


def test_summary_counts(tree):
    summary = tree.summary()
    assert summary.nodes == 3 and summary.solved and summary.successful_nodes == 2
    assert summary.successful_corrected_branches == 2
    assert summary.distinct_successful_trajectories == 1  # both branches took the same actions
    assert summary.env_steps == 3 + 2 + 2 and summary.reflections == 1 and summary.failed_reflections == 0
    assert summary.model_tokens == sum(s.prompt_tokens + s.completion_tokens for n in tree.nodes for s in n.steps)
    assert summary.outcomes == {"fail": 1, "success": 2} and summary.max_depth == 1
    total = summarize([tree, tree])
    assert total.tasks == 2 and total.coverage == 1.0 and total.reflector == "env"
    assert total.successes_per_1k_env_steps == pytest.approx(1000 * 2 / 14)


def test_trees_file_skips_torn_lines_and_keeps_the_latest(tree, tmp_path):
    path = tmp_path / "trees.jsonl"
    older = ExperienceTree.from_dict({**tree.to_dict(), "unexplored_branches": 7})
    append_jsonl(path, older.to_dict())
    with path.open("a") as handle:
        handle.write('{"task": {"task_id": "line/9"')  # a writer killed mid-line
    append_jsonl(path, tree.to_dict())
    assert load_trees(path) == {"line/2": tree}
    assert load_trees(tmp_path / "missing.jsonl") == {}
