"""Inference-time reflection: a chain per sample retries with lessons until it succeeds or its
turn budget is spent; Pass@k is over chains, and the cost is reported next to it."""

import json

from leafe.agent import Agent
from leafe.config import config_from_dict
from leafe.eval.reflexion import CHAINS_FILE, chain_tasks, evaluate_reflexion
from leafe.policy.base import SamplingParams
from leafe.prompting import Prompter
from leafe.runs import RunDir
from leafe.types import Task
from tests.line_world import TrapLineWorld
from tests.method.scripted import line_policy

TASKS = [Task("line/2", "test", {"goal": 2}), Task("line/3", "test", {"goal": 3})]


def _cfg(budget):
    return config_from_dict({
        "eval": {"method": "reflexion", "budget_episodes": budget, "samples_per_task": 2, "ks": [1, 2]},
        "explore": {"reflector": "env"},
        "rollout": {"max_steps": 4},
    })


def _agent(policy):
    return Agent(TrapLineWorld, policy, Prompter(history_window=8), SamplingParams(), max_steps=4)


def test_lessons_turn_failed_first_attempts_into_solved_chains(tmp_path):
    # Without a lesson the policy steps left into the trap; with one it walks right to the goal.
    policy = line_policy(["left"])
    result = evaluate_reflexion(_cfg(budget=3), RunDir(tmp_path, False), _agent(policy), TASKS)
    assert result.mean[0] == 1.0  # every chain: attempt 1 falls in the trap, attempt 2 succeeds
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    details = metrics["details"] if "details" in metrics else metrics
    assert details["mean_attempts_per_sample"] == 2.0
    assert details["mean_env_steps_per_sample"] == (1 + 2.5)  # 1 trap turn, then 2 or 3 turns right
    assert details["env_steps_per_task"] == 2 * 3.5
    assert details["mean_model_tokens_per_sample"] > 0
    trees = [json.loads(line) for line in (tmp_path / CHAINS_FILE).read_text().splitlines()]
    assert sorted(t["task"]["task_id"] for t in trees) == ["line/2#0", "line/2#1", "line/3#0", "line/3#1"]
    from leafe.viewer import write_view

    assert "line/2#1" in write_view(tmp_path).read_text()  # `leafe view` draws the chains


def test_an_attempt_that_spends_the_whole_budget_leaves_no_retry(tmp_path):
    # "up" is invalid in LineWorld: the first attempt uses all 4 turns of a one-episode budget.
    result = evaluate_reflexion(_cfg(budget=1), RunDir(tmp_path, False), _agent(line_policy(["up"])), TASKS)
    assert result.mean[0] == 0.0
    details = json.loads((tmp_path / "metrics.json").read_text())
    details = details.get("details", details)
    assert details["mean_attempts_per_sample"] == 1.0 and details["mean_env_steps_per_sample"] == 4.0


def test_an_attempt_that_ends_early_leaves_its_turns_to_a_retry(tmp_path):
    tasks = TASKS + [Task("line/4", "test", {"goal": 4})]
    result = evaluate_reflexion(_cfg(budget=1), RunDir(tmp_path, False), _agent(line_policy(["left"])), tasks)
    # The trap ends attempt 1 after 1 turn; the retry's 3 turns reach goals 2 and 3, not 4.
    assert result.mean[0] == 2 / 3


def test_a_rerun_plays_only_the_missing_chains(tmp_path):
    first = evaluate_reflexion(_cfg(budget=3), RunDir(tmp_path, False), _agent(line_policy(["left"])), TASKS)
    policy = line_policy(["left"])
    again = evaluate_reflexion(_cfg(budget=3), RunDir(tmp_path, True), _agent(policy), TASKS)
    assert policy.batches == [] and again.mean == first.mean


def test_chain_tasks_keep_the_environment_instance():
    chains = chain_tasks(TASKS, 3)
    assert [c.task_id for c in chains[:3]] == ["line/2#0", "line/2#1", "line/2#2"]
    assert all(c.params == {"goal": 2} for c in chains[:3]) and len(chains) == 6
