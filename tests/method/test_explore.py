"""Exploration end to end: reflect -> roll back -> branch -> success, breadth-first order and
limits, exact budgets, replay checks, resume, and the equal-budget baselines."""

import pytest

from leafe.envs.sokoban import SokobanEnv, SokobanTasks
from leafe.envs.sokoban_diagnosis import diagnose
from leafe.method.explore import (
    Agent,
    ExploreSettings,
    explore,
    independent_sampling,
    iterative_refinement,
    make_reflector,
    run_method,
)
from leafe.method.reflect import EnvReflector
from leafe.method.tree import load_trees
from leafe.policy.base import SamplingParams
from leafe.prompting import Prompter
from leafe.runs import append_jsonl
from leafe.types import Task
from tests.line_world import FlakyLineWorld, LineWorld, SnapshotLineWorld, TrapLineWorld
from tests.method.scripted import LESSONS, FixedReflector, FunctionPolicy, deadlock_path, line_policy, sokoban_policy

PROMPTER = Prompter(history_window=20)


def _always(action):
    return FunctionPolicy(lambda prompt: f" hm\nAction: {action}")


class NoSnapshot:
    """Hides an environment's snapshot/restore, so rollback must replay."""

    def __init__(self, env):
        self.env = env

    def reset(self, task):
        return self.env.reset(task)

    def step(self, action):
        return self.env.step(action)


@pytest.mark.parametrize("snapshots", [True, False])
def test_sokoban_deadlock_is_corrected_by_an_env_reflection(snapshots):
    task = next(t for t in SokobanTasks().tasks("train", 10) if len(deadlock_path(t)) >= 3)
    path = deadlock_path(task)
    policy = sokoban_policy(task, path)
    make_env = SokobanEnv if snapshots else (lambda: NoSnapshot(SokobanEnv()))
    agent = Agent(make_env, policy, Prompter(history_window=2), SamplingParams(), max_steps=20)
    settings = ExploreSettings(reflector="env", reflect_every=50, max_branches_per_node=1, restart=False)
    (tree,) = explore([task], agent, EnvReflector(diagnose), settings, seed=0)

    root, branch = tree.nodes
    assert root.outcome == "fail" and [s.action for s in root.steps] == path and root.steps[-1].info["deadlock"]
    (reflection,) = root.reflections
    assert (reflection.reflector, reflection.trigger, reflection.rollback_step) == ("env", "end", len(path))
    assert f"At step {len(path)} you pushed the box" in reflection.experience_summary
    assert branch.parent_id == 0 and branch.depth == 1 and branch.spawned_by == reflection
    assert branch.prefix_length == len(path) - 1 and list(branch.prefix_actions) == path[:-1]
    assert branch.rollback == ("restore" if snapshots else "replay")
    assert branch.experience == (reflection.experience_summary,)
    assert reflection.experience_summary in branch.steps[0].prompt
    assert branch.outcome == "success" and branch.steps[0].action != path[-1]
    assert tree.trajectory(1).success and tree.trajectory(1).actions[: len(path) - 1] == path[:-1]
    summary = tree.summary()
    assert summary.successful_corrected_branches == 1 and summary.replay_mismatches == 0
    assert summary.rollback_env_steps == (1 if snapshots else len(path) - 1)


def test_breadth_first_order_depth_and_branching():
    reflector = FixedReflector()
    agent = Agent(LineWorld, _always("left"), PROMPTER, SamplingParams(), max_steps=3)
    settings = ExploreSettings(max_depth=2, max_branches_per_node=2, max_reflections_per_node=1, restart=False)
    (tree,) = explore([Task("line/5", "train", {"goal": 5})], agent, reflector, settings, seed=0)
    assert [n.depth for n in tree.nodes] == [0, 1, 1, 2, 2, 2, 2]
    assert [n.parent_id for n in tree.nodes] == [None, 0, 0, 1, 1, 2, 2]
    assert all(n.outcome == "truncated" for n in tree.nodes)
    assert [len(n.reflections) for n in tree.nodes] == [1, 1, 1, 0, 0, 0, 0]  # max depth: no reflection
    assert all(n.prefix_length == 2 and len(n.steps) == 1 for n in tree.nodes[1:])
    assert reflector.calls == [1, 2]  # one batched reflector call per wave
    assert tree.nodes[3].experience == ("lesson 3", "lesson 3")  # ancestors' summaries accumulate
    assert len({n.seed for n in tree.nodes}) == 7


def test_rollback_restores_snapshots_taken_in_ancestors_and_in_branches():
    taus = iter([3, 5])
    reflector = FixedReflector(step=lambda at_step: next(taus))
    agent = Agent(SnapshotLineWorld, _always("left"), PROMPTER, SamplingParams(), max_steps=5)
    settings = ExploreSettings(max_depth=2, max_branches_per_node=1, max_reflections_per_node=1, restart=False)
    (tree,) = explore([Task("line/9", "train", {"goal": 9})], agent, reflector, settings, seed=0)
    root, child, grandchild = tree.nodes
    assert (child.parent_id, child.prefix_length, grandchild.parent_id, grandchild.prefix_length) == (0, 2, 1, 4)
    # The grandchild's state (after turn 3 of the child's history, then one action) came from the child's own snapshot.
    assert child.rollback == grandchild.rollback == "restore"
    assert tree.summary().rollback_env_steps == 2 and tree.summary().replay_mismatches == 0
    assert grandchild.steps[0].prompt.endswith("You are at -4.\nThought:")
    assert tree.trajectory(2).actions == ["left"] * 5


def test_feedback_trigger_reflects_where_feedback_signals_trouble():
    reflector = FixedReflector(step=lambda at_step: 1)
    agent = Agent(LineWorld, line_policy(["jump", "right", "right"]), PROMPTER, SamplingParams(), max_steps=3)
    settings = ExploreSettings(trigger="feedback", max_depth=1, max_branches_per_node=1, restart=False)
    (tree,) = explore([Task("line/5", "train", {"goal": 5})], agent, reflector, settings, seed=0)
    assert [(r.at_step, r.trigger) for r in tree.nodes[0].reflections] == [(1, "invalid_action"), (3, "end")]
    (branch,) = tree.nodes[1:]  # both reflections roll back to step 1: one branch point, kept once
    assert branch.spawned_by.at_step == 3 and branch.prefix_length == 0 and branch.rollback == "reset"


def test_budgets_are_never_exceeded_and_counted_exactly():
    reflector = FixedReflector(tokens=7)
    policy = _always("left")
    agent = Agent(LineWorld, policy, PROMPTER, SamplingParams(), max_steps=3)
    settings = ExploreSettings(max_depth=6, max_branches_per_node=3, max_env_steps=10)
    tasks = [Task(f"line/{goal}", "train", {"goal": goal}) for goal in (5, 6, 7)]
    trees = explore(tasks, agent, reflector, settings, seed=0)
    for tree in trees:
        summary = tree.summary()
        assert summary.env_steps == 10 and summary.unexplored_branches > 0
        assert summary.reflection_tokens == 7 * summary.reflections
    assert sum(t.summary().model_tokens for t in trees) == policy.tokens + 7 * sum(t.summary().reflections for t in trees)


def test_token_budget_stops_new_model_calls():
    policy = _always("left")
    agent = Agent(LineWorld, policy, PROMPTER, SamplingParams(), max_steps=3)
    settings = ExploreSettings(max_depth=9, max_branches_per_node=2, max_env_steps=1000, max_model_tokens=400)
    (tree,) = explore([Task("line/5", "train", {"goal": 5})], agent, FixedReflector(), settings, seed=0)
    spent_before_last_call = sum(len(p.split()) + 2 for batch in policy.batches[:-1] for p in batch)
    assert spent_before_last_call < 400 <= tree.summary().model_tokens == policy.tokens


def test_nondeterministic_replay_marks_branches_invalid():
    agent = Agent(FlakyLineWorld, _always("right"), PROMPTER, SamplingParams(), max_steps=3)
    settings = ExploreSettings(max_depth=3, max_branches_per_node=2, restart=False)
    (tree,) = explore([Task("line/9", "train", {"goal": 9})], agent, FixedReflector(), settings, seed=0)
    root, *branches = tree.nodes
    assert len(branches) == 2 and all(n.outcome == "invalid_replay" and n.steps == () for n in branches)
    assert all(n.rollback == "replay" and n.replay_mismatch.startswith("step 1 ('right')") for n in branches)
    summary = tree.summary()
    assert summary.replay_mismatches == 2 and summary.rollback_env_steps == 2 and summary.env_steps == 3


def _four_tasks():
    return [Task(f"line/{goal}", "train", {"goal": goal}) for goal in (1, 2, 3, 4)]


def test_resume_explores_only_the_missing_tasks(tmp_path):
    settings = ExploreSettings(reflector="env", max_tasks_in_flight=4)
    agent = Agent(TrapLineWorld, line_policy(["right", "left", "left", "left"]), PROMPTER, SamplingParams(), max_steps=8)
    full = run_method("leafe", _four_tasks(), agent, settings, seed=5, trees_file=tmp_path / "full.jsonl")
    assert all(tree.summary().solved for tree in full)

    partial = tmp_path / "partial.jsonl"
    for tree in full[:2]:
        append_jsonl(partial, tree.to_dict())
    policy = line_policy(["right", "left", "left", "left"])
    saved = []
    agent = Agent(TrapLineWorld, policy, PROMPTER, SamplingParams(), 8)
    resumed = run_method("leafe", _four_tasks(), agent, settings, 5, partial, on_tree=saved.append)
    assert sorted(tree.task.task_id for tree in saved) == ["line/3", "line/4"]
    instructions = {prompt.split("\n")[0] for batch in policy.batches for prompt in batch}
    assert instructions == {"Reach 3.", "Reach 4."}
    assert resumed == full  # a task is explored the same whatever else shares its batches
    assert set(load_trees(partial)) == {"line/1", "line/2", "line/3", "line/4"}
    with pytest.raises(ValueError, match="holds trees of method 'leafe'"):
        run_method("independent", _four_tasks(), agent, settings, 5, partial)


def test_independent_sampling_spends_the_whole_budget_on_fresh_episodes():
    agent = Agent(LineWorld, _always("left"), PROMPTER, SamplingParams(), max_steps=3)
    (tree,) = independent_sampling([Task("line/5", "train", {"goal": 5})], agent, ExploreSettings(max_env_steps=10), seed=0)
    assert tree.method == "independent" and tree.reflector is None
    assert all(n.parent_id is None and n.depth == 0 and n.experience == () for n in tree.nodes)
    # Wave 2 plays ceil(7 / 3) = 3 episodes at once; the budget grants turns in order, then cuts.
    # Earlier attempts are played to their end; only the last one is cut by the budget.
    assert [len(n.steps) for n in tree.nodes] == [3, 3, 3, 1] and tree.summary().env_steps == 10
    assert [n.outcome for n in tree.nodes] == ["truncated", "truncated", "truncated", "out_of_budget"]


def test_iterative_refinement_retries_from_scratch_with_the_reflections():
    env_reflector = EnvReflector(TrapLineWorld().diagnose)
    agent = Agent(TrapLineWorld, line_policy(["right", "left", "left"]), PROMPTER, SamplingParams(), max_steps=6)
    settings = ExploreSettings(restart=False)
    (tree,) = iterative_refinement([Task("line/2", "train", {"goal": 2})], agent, env_reflector, settings, seed=0)
    root, retry = tree.nodes  # stops at the first success
    assert root.outcome == "fail" and retry.outcome == "success"
    assert retry.parent_id == 0 and retry.prefix_length == 0 and retry.rollback == "reset"
    assert retry.spawned_by.rollback_step == 3 and LESSONS in retry.steps[0].prompt
    assert [s.action for s in retry.steps] == ["right", "right"]

    agent = Agent(LineWorld, _always("left"), PROMPTER, SamplingParams(), max_steps=3)
    settings = ExploreSettings(max_env_steps=12, experience_window=2)
    (chain,) = iterative_refinement([Task("line/5", "train", {"goal": 5})], agent, FixedReflector(), settings, seed=0)
    assert [n.parent_id for n in chain.nodes] == [None, 0, 1, 2] and chain.summary().env_steps == 12
    assert chain.nodes[3].experience == ("lesson 3", "lesson 3")  # the window keeps the latest two
    assert [len(n.reflections) for n in chain.nodes] == [1, 1, 1, 0]  # no budget left to reflect


def test_experience_window_zero_branches_without_the_summary():
    # The "no experience summary" ablation: the rollback still happens, the lesson is not shown.
    agent = Agent(LineWorld, line_policy(["left"], good="right"), PROMPTER, SamplingParams(), max_steps=3)
    settings = ExploreSettings(max_depth=1, max_branches_per_node=1, max_reflections_per_node=1, experience_window=0, restart=False)
    (tree,) = explore([Task("line/1", "train", {"goal": 1})], agent, FixedReflector(step=lambda at_step: 1), settings, seed=0)
    root, branch = tree.nodes
    assert branch.spawned_by is not None and branch.prefix_length == 0 and branch.experience == ()
    assert all(LESSONS not in step.prompt for step in branch.steps)
    assert branch.outcome == "truncated"  # without the lesson the scripted policy repeats its mistake


def test_methods_share_the_first_attempt_and_the_budget():
    agent = Agent(TrapLineWorld, line_policy(["right", "left", "left"]), PROMPTER, SamplingParams(), max_steps=6)
    settings = ExploreSettings(reflector="env", max_env_steps=12)
    reflector = make_reflector(settings, agent)
    task = [Task("line/3", "train", {"goal": 3})]
    trees = [
        explore(task, agent, reflector, settings, seed=1)[0],
        independent_sampling(task, agent, settings, seed=1)[0],
        iterative_refinement(task, agent, reflector, settings, seed=1)[0],
    ]
    assert trees[0].nodes[0].steps == trees[1].nodes[0].steps == trees[2].nodes[0].steps
    assert [tree.summary().env_steps for tree in trees] == [12, 12, 12]  # restart: all spend the budget
    assert [tree.summary().solved for tree in trees] == [True, False, True]


def test_restart_spends_the_leftover_budget_on_new_roots():
    agent = Agent(TrapLineWorld, line_policy(["right", "left", "left"]), PROMPTER, SamplingParams(), max_steps=6)
    settings = ExploreSettings(reflector="env", max_branches_per_node=1, max_env_steps=14)
    (tree,) = explore([Task("line/2", "train", {"goal": 2})], agent, make_reflector(settings, agent), settings, seed=0)
    assert [(n.parent_id, n.outcome) for n in tree.nodes] == [
        (None, "fail"), (0, "success"), (None, "fail"), (2, "success"), (None, "fail"), (4, "out_of_budget"),
    ]  # 3 + 2 + 3 + 2 + 3 turns, then the last branch gets the one turn left
    assert tree.summary().env_steps == 14 and len({n.seed for n in tree.nodes}) == 6
    (chains,) = iterative_refinement([Task("line/2", "train", {"goal": 2})], agent, make_reflector(settings, agent), settings, 0)
    assert [n.parent_id for n in chains.nodes] == [None, 0, None, 2, None, 4]


def test_self_reflection_with_a_random_model_never_crashes(tiny_policy):
    agent = Agent(TrapLineWorld, tiny_policy, PROMPTER, SamplingParams(temperature=1.0, max_new_tokens=6), max_steps=3)
    settings = ExploreSettings(max_env_steps=6, max_reflection_attempts=2, reflection_max_new_tokens=6, max_depth=2)
    (tree,) = explore([Task("line/2", "train", {"goal": 2})], agent, make_reflector(settings, agent), settings, seed=0)
    summary = tree.summary()
    assert summary.env_steps <= 6 and summary.reflections >= 1
    reflection = tree.nodes[0].reflections[0]
    assert reflection.reflector == "self" and reflection.model_tokens > 0
    assert reflection.failed or 1 <= reflection.rollback_step <= 3
    assert summary.model_tokens == sum(s.prompt_tokens + s.completion_tokens for n in tree.nodes for s in n.steps) + summary.reflection_tokens


def test_settings_are_validated():
    with pytest.raises(ValueError, match="reflector\n  Input should be 'self', 'model' or 'env'"):
        ExploreSettings(reflector="oracle")
    with pytest.raises(ValueError, match="trigger\n  Input should be 'interval' or 'feedback'"):
        ExploreSettings(trigger="random")
    with pytest.raises(ValueError, match="max_env_steps\n  Input should be greater than or equal to 1"):
        ExploreSettings(max_env_steps=0)
    with pytest.raises(ValueError, match="max_model_tokens"):
        ExploreSettings(max_model_tokens=0)
    with pytest.raises(ValueError, match="unknown exploration method"):
        run_method("beam", [], None, ExploreSettings(), 0, None)
