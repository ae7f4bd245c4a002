"""Early Experience: alternatives are executed from the expert's states (restore or replay give
the same outcomes), the world-model and rationale examples have the right prompts and targets,
and ``leafe early-experience`` runs end to end and resumes without collecting again."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from leafe.method.early_experience import (
    Cost, ExpertState, build_examples, clean_rationale, collect, rationale_prompt, state_prompt,
)
from leafe.policy.base import SamplingParams
from leafe.prompting import Prompter
from leafe.types import Task
from tests.line_world import LineWorld, SnapshotLineWorld
from tests.method.scripted import FunctionPolicy

REPO = Path(__file__).resolve().parents[2]
PROPOSALS = [" go back\nAction: left", " same as expert\nAction: right", " hop\nAction: jump", " no action here"]


class ExpertLineWorld(LineWorld):
    """LineWorld with an expert but no snapshots (alternatives are reached by replay)."""

    def expert_actions(self, task):
        return ["right"] * task.params["goal"]


def _proposer():
    """Sample j of a state answers PROPOSALS[j]; rationale prompts get an explanation."""
    calls = {"n": 0}

    def reply(prompt):
        if "explain why" in prompt:
            return " Right moves toward the goal; left moves away and jump is not an action.\nAction: left\n\nmore"
        calls["n"] += 1
        return PROPOSALS[(calls["n"] - 1) % len(PROPOSALS)]

    return FunctionPolicy(reply)


def _collect(env_class, variant="iwm", alternatives=4):
    cost = Cost()
    prompter = Prompter(history_window=8)
    tasks = [Task("line/train/0", "train", {"goal": 2}), Task("line/train/1", "train", {"goal": 3})]
    states = collect(
        env_class, _proposer(), prompter, SamplingParams(temperature=1.0), tasks, variant=variant,
        alternatives=alternatives, max_states_per_task=8, observation_chars=200, rationale_max_new_tokens=32, seed=0, cost=cost,
    )
    return states, cost, prompter


def test_alternatives_are_executed_from_each_expert_state():
    per_task, cost, _prompter = _collect(SnapshotLineWorld)
    assert [len(states) for states in per_task] == [2, 3]  # one state per expert action
    state = per_task[1][2]  # goal 3, after two expert 'right' moves: at 2
    assert state.observation == "You are at 2." and state.expert.observation == "You are at 3." and state.expert.terminated
    # 'right' equals the expert action and the last proposal has no action: both are left out.
    assert [o.action for o in state.alternatives] == ["left", "jump"]
    assert state.alternatives[0].observation == "You are at 1." and not state.alternatives[0].invalid
    assert state.alternatives[1].invalid and state.alternatives[1].observation.startswith("Invalid action: 'jump'")
    assert state.completions == (" go back\nAction: left", " hop\nAction: jump")
    assert cost.env_steps == 5 + 2 * 5  # expert steps + two alternatives per state (restores are free)
    assert cost.requests == 4 * 5 and cost.completion_tokens > 0


def test_replay_reaches_the_same_states_as_restore_and_its_steps_are_counted():
    restored, _, _ = _collect(SnapshotLineWorld)
    replayed, cost, _ = _collect(ExpertLineWorld)
    assert replayed == restored
    replay_steps = sum(2 * turn for goal in (2, 3) for turn in range(goal))  # each alternative replays the prefix
    assert cost.env_steps == 5 + 2 * 5 + replay_steps


def test_a_state_round_trips_through_json():
    per_task, _, _ = _collect(SnapshotLineWorld, variant="sr")
    for state in per_task[1]:
        assert ExpertState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_world_model_examples_continue_the_transcript_with_the_next_observation():
    per_task, _, prompter = _collect(SnapshotLineWorld)
    states = [s for states in per_task for s in states]
    phases = build_examples(states, prompter, "iwm")
    assert len(phases["world_model"]) == 2 * 5 and len(phases["policy"]) == 5
    state = per_task[1][1]  # at 1, goal 3
    example = [e for e in phases["world_model"] if e.task_id == "line/train/1" and e.turn == 1][0]
    assert example.kind == "world_model"
    assert example.prompt == f"{state_prompt(prompter, state)} go back\nAction: left\n\nObservation:\n"
    assert example.completion == "You are at 0.\n\n"
    imitation = [e for e in phases["policy"] if e.task_id == "line/train/1" and e.turn == 1][0]
    assert imitation.kind == "imitation" and imitation.prompt == state_prompt(prompter, state)
    assert prompter.parse_action("Thought:" + imitation.completion) == "right" and imitation.completion.endswith("\n\n")
    # The history shows the expert's own earlier turn, as the policy would see it.
    assert "Action: right" in imitation.prompt and imitation.prompt.endswith("You are at 1.\nThought:")


def test_self_reflection_trains_the_rationale_then_the_expert_action():
    per_task, _, prompter = _collect(SnapshotLineWorld, variant="sr")
    state = per_task[0][0]
    prompt = rationale_prompt("completion", state, 200, seed=1)
    for outcome in (state.expert, *state.alternatives):
        assert f"Action: {outcome.action}\n  Result: {outcome.observation}" in prompt
    assert state.rationale == "Right moves toward the goal; left moves away and jump is not an action."
    (example, *_rest) = build_examples([state], prompter, "sr")["policy"]
    assert example.kind == "reflection"
    assert example.completion == f" {state.rationale}\nAction: right\n\n"
    bare = build_examples([ExpertState(**{**state.__dict__, "alternatives": (), "completions": (), "rationale": ""})], prompter, "sr")
    assert [e.kind for e in bare["policy"]] == ["imitation"]


def test_rationales_cut_at_the_token_cap_are_counted():
    """A rationale the cap cuts mid-thought is counted; one whose kept text (first paragraph, before
    any Action: line) ended before the cap is not."""

    class Capped(FunctionPolicy):  # one token per word, cut at the cap as a real backend would
        def generate(self, requests, params):
            def cut(text):
                return re.match(rf"\s*(?:\S+\s+){{{params.max_new_tokens - 1}}}\S+", text).group(0)

            return [
                replace(g, text=cut(g.text), finish_reason="length") if g.completion_tokens > params.max_new_tokens else g
                for g in super().generate(requests, params)
            ]

    # The rationale reply has 17 words: 14 of thought, then "Action: left", a blank line, "more".
    # 5 states have alternatives, so 5 rationales are asked for.
    for cap, cut in ((32, 0), (16, 0), (8, 5)):
        cost = Cost()
        tasks = [Task("line/train/0", "train", {"goal": 2}), Task("line/train/1", "train", {"goal": 3})]
        policy = Capped(_proposer().reply)
        collect(SnapshotLineWorld, policy, Prompter(history_window=8), SamplingParams(temperature=1.0), tasks,
                variant="sr", alternatives=4, max_states_per_task=8, observation_chars=200, rationale_max_new_tokens=cap,
                seed=0, cost=cost)
        assert cost.rationales_cut == cut, cap


def test_clean_rationale_keeps_one_line_of_thought():
    assert clean_rationale(" It is closer.\nAction: up\n\nNext") == "It is closer."
    assert clean_rationale("a\nb  c\n\nd") == "a b c"


def test_an_environment_without_demonstrations_is_refused():
    with pytest.raises(ValueError, match="no expert demonstration"):
        collect(LineWorld, _proposer(), Prompter(), SamplingParams(), [Task("line/train/0", "train", {"goal": 1})],
                variant="iwm", alternatives=2, max_states_per_task=4, observation_chars=100, rationale_max_new_tokens=8,
                seed=0, cost=Cost())


def _command(out: Path, variant: str, model: str) -> list[str]:
    return [
        "early-experience", str(REPO / "configs" / "sokoban_quickstart.yaml"), f"output_dir={out}", f"name=ee-{variant}",
        f"policy.model={model}",
        f"early_experience.variant={variant}", "early_experience.num_tasks=1", "early_experience.max_states_per_task=2",
        "early_experience.alternatives=4", "early_experience.rationale_max_new_tokens=16", "policy.temperature=1.0",
        "policy.max_new_tokens=24", "sft.finetune=full", "sft.epochs=1", "sft.batch_size=8", "sft.gradient_accumulation_steps=1",
    ]


@pytest.mark.minutes(2)
def test_the_command_trains_a_world_model_then_the_policy_and_a_rerun_does_not_collect_again(tmp_path):
    from leafe.cli import main

    command = _command(tmp_path, "iwm", "smollm2-135m-instruct")  # a real model proposes real actions
    assert main(command) == 0
    run = tmp_path / "ee-iwm"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["states"] == 2 and summary["collection_cost"]["env_steps"] >= 2
    assert summary["alternatives"] > 0, "the embedded model at temperature 1 proposed no action other than the expert's"
    assert (run / "world_model" / "model" / "leafe_sft.json").is_file() and (run / "model" / "leafe_sft.json").is_file()
    assert json.loads((run / "model" / "leafe_sft.json").read_text())["base_model"].startswith(str(run / "world_model"))
    kinds = [json.loads(line)["kind"] for line in (run / "data.jsonl").read_text().splitlines()]
    assert kinds.count("world_model") == summary["alternatives"] and kinds.count("imitation") == 2
    collected = (run / "states.jsonl").read_text()
    assert main(command) == 0
    assert (run / "states.jsonl").read_text() == collected
    again = json.loads((run / "summary.json").read_text())
    assert again["examples"] == summary["examples"]
    assert again["collection_seconds"] == summary["collection_seconds"] > 0  # kept, not reset by the rerun


def test_the_self_reflection_command_runs_end_to_end(tmp_path, tiny_model_dir):
    from leafe.cli import main

    assert main(_command(tmp_path, "sr", str(tiny_model_dir))) == 0
    summary = json.loads((tmp_path / "ee-sr" / "summary.json").read_text())
    # A random model rarely writes a parseable action: states without alternatives imitate.
    assert summary["examples"]["policy"].get("imitation", 0) + summary["examples"]["policy"].get("reflection", 0) == 2
    assert "rationales_cut" in summary["collection_cost"]
    assert (tmp_path / "ee-sr" / "model" / "leafe_sft.json").is_file()
