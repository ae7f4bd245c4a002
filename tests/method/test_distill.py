"""Stage-2 data: counterfactual examples drop the experience summary and target the corrected
turn, rehearsal keeps a fraction of successful histories, prompts equal what the policy saw."""

import json
import random

import pytest

from leafe.envs.sokoban import SokobanEnv, SokobanTasks
from leafe.envs.sokoban_diagnosis import diagnose
from leafe.method.distill import build_examples, corrections, export_record, target_text, turn_prompt
from leafe.method.explore import Agent, ExploreSettings, explore, independent_sampling
from leafe.method.reflect import EnvReflector
from leafe.policy.base import SamplingParams
from leafe.prompting import Prompter
from leafe.types import SFTExample, Task
from tests.line_world import LineWorld
from tests.method.scripted import LESSONS, FixedReflector, FunctionPolicy, deadlock_path, line_policy, sokoban_policy

PROMPTER = Prompter(history_window=20)


def _sokoban_tree():
    task = next(t for t in SokobanTasks().tasks("train", 10) if len(deadlock_path(t)) >= 3)
    path = deadlock_path(task)
    agent = Agent(SokobanEnv, sokoban_policy(task, path), PROMPTER, SamplingParams(), max_steps=20)
    settings = ExploreSettings(reflector="env", reflect_every=50, max_branches_per_node=1, restart=False)
    (tree,) = explore([task], agent, EnvReflector(diagnose), settings, seed=0)
    return tree, path


def test_counterfactual_is_the_corrected_turn_without_the_experience_summary():
    tree, path = _sokoban_tree()
    assert [node.outcome for node in tree.nodes] == ["fail", "success"]
    assert corrections(tree) == [(1, 1)]
    examples = build_examples([tree], PROMPTER, rehearsal_fraction=0.0)
    (cf,) = examples
    branch = tree.nodes[1]
    assert cf.kind == "counterfactual" and cf.turn == len(path) - 1 and cf.node_id == 1
    # The policy saw the lesson when it made the correction; the example must not show it.
    assert LESSONS in branch.steps[0].prompt and LESSONS not in cf.prompt
    assert cf.completion == target_text(PROMPTER, branch.steps[0])
    assert cf.completion.endswith("\n\n") and f"Action: {branch.steps[0].action}" in cf.completion
    # Same history, same observation: the example's prompt is the branch prompt minus the lessons.
    without_lessons = PROMPTER.build(
        tree.instruction,
        [],
        tree.initial_observation,
    )
    assert cf.prompt.startswith(without_lessons.split("Observation:")[0])
    assert cf.prompt.count("Observation:") == branch.steps[0].prompt.count("Observation:")


def test_rebuilt_prompts_equal_the_recorded_ones_when_no_experience_was_shown():
    tree, _path = _sokoban_tree()
    root = tree.nodes[0]
    for turn, step in enumerate(root.steps):
        assert turn_prompt(PROMPTER, tree.instruction, tree.initial_observation, root.steps, turn) == step.prompt


def test_rehearsal_takes_every_action_turn_of_kept_successes():
    tree, path = _sokoban_tree()
    examples = build_examples([tree], PROMPTER, max_cf_per_task=0, rehearsal_fraction=1.0)
    history = tree.history(1)
    assert [e.kind for e in examples] == ["rehearsal"] * len(history)
    assert [e.turn for e in examples] == list(range(len(history)))
    assert all(LESSONS not in e.prompt for e in examples)


def test_rehearsal_fraction_and_determinism():
    agent = Agent(LineWorld, line_policy(["right"]), PROMPTER, SamplingParams(), max_steps=3)
    tasks = [Task(f"line/{i}", "train", {"goal": 1}) for i in range(10)]
    trees = independent_sampling(tasks, agent, ExploreSettings(max_env_steps=1), seed=0)
    assert sum(tree.summary().solved for tree in trees) == 10
    fifth = build_examples(trees, PROMPTER, rehearsal_fraction=0.2, seed=3)
    assert len(fifth) == 1  # every success is the same (prompt, target) pair apart from the task
    assert build_examples(trees, PROMPTER, rehearsal_fraction=0.2, seed=3) == fifth
    kept = {e.task_id for e in build_examples(trees, PROMPTER, rehearsal_fraction=0.5, seed=3)}
    assert len(kept) == 1  # identical pairs are kept once
    assert build_examples(trees, PROMPTER, rehearsal_fraction=0.0) == []


def test_max_cf_per_task_caps_corrections():
    # Every root fails ("left" x3); every branch (rolled back to step 1, with a lesson) succeeds.
    agent = Agent(LineWorld, line_policy(["left"], good="right"), PROMPTER, SamplingParams(), max_steps=3)
    settings = ExploreSettings(max_depth=1, max_branches_per_node=3, max_reflections_per_node=1, max_env_steps=30)
    reflector = FixedReflector(step=lambda at_step: 1)
    (tree,) = explore([Task("line/1", "train", {"goal": 1})], agent, reflector, settings, seed=0)
    assert len(corrections(tree)) > 3
    capped = build_examples([tree], PROMPTER, max_cf_per_task=3, rehearsal_fraction=0.0)
    assert 1 <= len(capped) <= 3 and {e.kind for e in capped} == {"counterfactual"}


def test_export_record_has_masks_for_each_stack():
    example = SFTExample("counterfactual", "Task\nObservation:\nx\nThought:", " go\nAction: up\n\n", "t", 1, 0)
    record = json.loads(json.dumps(export_record(example, weight=1.0)))
    assert record["prompt"].endswith("Thought:") and record["completion"] == example.completion
    assert [m["train"] for m in record["messages"]] == [False, True]
    assert [s["label"] for s in record["segments"]] == [False, True]
    assert "".join(s["text"] for s in record["segments"]) == example.prompt + example.completion
    chat = SFTExample("rehearsal", [{"role": "system", "content": "s"}, {"role": "user", "content": "o"}], "Action: up", "t", 0, 0)
    record = export_record(chat, weight=0.5)
    assert record["completion"] == [{"role": "assistant", "content": "Action: up"}] and "segments" not in record
    assert [m["train"] for m in record["messages"]] == [False, False, True] and record["weight"] == 0.5


def test_bad_cf_target_is_named():
    with pytest.raises(ValueError, match="cf_target"):
        build_examples([], PROMPTER, cf_target="episode")


def test_invalid_and_unparseable_turns_are_never_targets():
    # A root that plays an invalid move, a reply without an action, then reaches the goal.
    script = iter([" hm\nAction: jump", " hm", " hm\nAction: right"])
    agent = Agent(LineWorld, FunctionPolicy(lambda prompt: next(script)), PROMPTER, SamplingParams(), max_steps=3)
    (tree,) = independent_sampling([Task("line/1", "train", {"goal": 1})], agent, ExploreSettings(max_env_steps=3), seed=0)
    steps = tree.nodes[0].steps
    assert steps[0].info["invalid_action"] and steps[1].action is None and tree.nodes[0].outcome == "success"
    (example,) = build_examples([tree], PROMPTER, rehearsal_fraction=1.0)
    assert example.turn == 2 and "Action: right" in example.completion
