"""Reflection: the parser, the prompt, the policy reflector's retries and the env reflector."""

import pytest

from leafe.method.reflect import (
    EnvReflector,
    PolicyReflector,
    Reflection,
    ReflectionQuery,
    build_reflector,
    numbered_history,
    parse_reflection,
    reflection_prompt,
)
from leafe.policy.base import SamplingParams
from leafe.types import Step, Task
from tests.line_world import LineWorld, TrapLineWorld
from tests.method.scripted import FunctionPolicy


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Rollback step: 3\nExperience: Pushed the box into a corner. Go around it.", (3, "Pushed the box into a corner. Go around it.")),
        ("**Rollback step:** 2\n**Experience:** Wall ahead. Move up.", (2, "Wall ahead. Move up.")),
        ("rollback_step = 4\nexperience: too far left", (4, "too far left")),
        ("ROLLBACK STEP: #1\nEXPERIENCE: wrong first move", (1, "wrong first move")),
        ("Sure! Rollback step: three\nExperience: I pushed left.", (3, "I pushed left.")),
        ("Rollback to step 2. Lesson: do not push the box left", (2, "do not push the box left")),
        ("Rollback step: the last\nExperience: the final push was bad", (5, "the final push was bad")),
        ("Experience: Stepping left was wrong. Rollback step: 2", (2, "Stepping left was wrong.")),
        ("Rollback step: 9\nExperience: late mistake", (5, "late mistake")),  # clamped to t=5
        ("Rollback step: 3rd\nExperience: ordinal", (3, "ordinal")),
        ("Reflection: hmm, hard. Rollback step: 3\nExperience: go up.", (3, "go up.")),
        ("Rollback step: 2\nI should have moved up instead.", (2, "I should have moved up instead.")),
        ("Rollback step: 2\nExperience: One. Two. Three sentences.", (2, "One. Two.")),
        ("Rollback step: 2\nExperience: first line\n\nRollback step: 4\nunrelated", (2, "first line")),
        ("Rollback step: 0\nExperience: zero is not a step", None),
        ("Rollback step: -\nExperience: no number", None),
        ("Rollback step: 3", None),
        ("Rollback step: 3.\n\n", None),
        ("Experience: I should go up.", None),
        ("I think step 3 was wrong", None),
        ("", None),
        ("Rollback step: 2\nExperience: ...", None),
    ],
)
def test_parse_reflection(text, expected):
    assert parse_reflection(text, num_steps=5) == expected


def _steps(actions_and_observations):
    return tuple(
        Step("p", "c", action, observation, 0.0, False, False, 3, 2, {} if action else {"parse_error": True})
        for action, observation in actions_and_observations
    )


def _query(steps, seed=0):
    return ReflectionQuery(Task("line/2", "train", {"goal": 2}), "Reach 2.", "You are at 0.", steps, seed)


def test_history_and_prompt_formats():
    steps = _steps([("right", "Moved.\nMAP-1"), (None, "Your reply had no 'Action:' line.\nMAP-1"), ("left", "Moved.\nMAP-0")])
    history = numbered_history("MAP-START", steps)
    assert history.index("Start:\nMAP-START") < history.index("Step 1: Action: right\nResult: Moved.")
    assert "Step 2: (no valid 'Action:' line)" in history and "MAP-1" not in history
    assert history.endswith("Now:\nMoved.\nMAP-0")
    assert "MAP-1" in numbered_history("MAP-START", steps, feedback_lines=None)
    completion = reflection_prompt("completion", "Reach 2.", history)
    assert completion.startswith("Reach 2.") and completion.endswith("Rollback step:")
    chat = reflection_prompt("chat", "Reach 2.", history)
    assert [m["role"] for m in chat] == ["system", "user"] and history in chat[1]["content"]


def test_a_program_is_shown_as_a_code_block_in_the_history():
    program = "def add(a, b):\n    return a - b"
    history = numbered_history("Write add.", _steps([(program, "wrong answer: add(1, 2) returned -1, expected 3")]))
    assert f"Step 1: Action:\n```python\n{program}\n```\nResult: wrong answer" in history


def test_policy_reflector_retries_malformed_answers_with_new_seeds():
    answers = {}

    def reply(prompt):
        answers[prompt] = answers.get(prompt, 0) + 1
        return "no idea" if answers[prompt] < 3 else " 2\nExperience: going left was wrong."

    policy = FunctionPolicy(reply)
    seeds = []
    original = policy.generate
    policy.generate = lambda requests, params: (seeds.extend(r.seed for r in requests), original(requests, params))[1]
    reflector = PolicyReflector(policy, max_attempts=3, sampling=SamplingParams(max_new_tokens=16))
    steps = _steps([("right", "You are at 1."), ("left", "You are at 0."), ("left", "You are at -1.")])
    (reflection,) = reflector.reflect([_query(steps)])
    assert reflection.rollback_step == 2 and reflection.experience_summary == "going left was wrong."
    assert reflection.attempts == 3 and reflection.raw_texts[0] == "Rollback step:no idea"
    assert reflection.reflector == "self" and reflection.at_step == 3 and not reflection.failed
    assert len(set(seeds)) == 3
    assert reflection.prompt_tokens == sum(len(p.split()) for batch in policy.batches for p in batch)
    assert reflection.completion_tokens == 2 + 2 + 6 and reflection.model_tokens == policy.tokens


def test_policy_reflector_records_failure_and_batches():
    answer = "Rollback step: 1\nExperience: start over."
    policy = FunctionPolicy(lambda prompt: "blah" if "You are at 9" in str(prompt) else answer)
    reflector = PolicyReflector(policy, name="model", prompt_format="chat", max_attempts=2)
    good = _query(_steps([("left", "You are at -1.")]))
    bad = _query(_steps([("right", "You are at 9.")]))
    empty = _query(())
    failed, ok, nothing = reflector.reflect([bad, good, empty])
    assert failed.failed and failed.rollback_step is None and failed.attempts == 2 and failed.experience_summary == ""
    assert ok.rollback_step == 1 and ok.reflector == "model" and ok.raw_texts == (answer,)
    assert nothing is None
    assert [len(batch) for batch in policy.batches] == [2, 1]


def test_policy_reflector_survives_a_random_model(tiny_policy):
    reflector = PolicyReflector(tiny_policy, max_attempts=2, sampling=SamplingParams(temperature=1.0, max_new_tokens=8))
    steps = _steps([("right", "You are at 1."), ("left", "You are at 0.")])
    reflections = reflector.reflect([_query(steps, seed=1), _query(steps, seed=2)])
    for reflection in reflections:
        assert isinstance(reflection, Reflection) and 1 <= reflection.attempts <= 2
        assert reflection.failed or 1 <= reflection.rollback_step <= 2
        assert reflection.prompt_tokens > 0 and reflection.completion_tokens > 0


def test_env_reflector_uses_the_diagnosis():
    reflector = EnvReflector(TrapLineWorld().diagnose)
    trapped = _steps([("right", "You are at 1."), ("left", "You are at 0."), ("left", "trap")])
    solved = _steps([("right", "You are at 1."), ("right", "You are at 2.")])
    reflection, nothing = reflector.reflect([_query(trapped), _query(solved)])
    assert nothing is None
    assert reflection.rollback_step == 3 and "trap" in reflection.experience_summary
    assert reflection.reflector == "env" and reflection.model_tokens == 0 and reflection.attempts == 1


def test_build_reflector_names_and_errors():
    policy = FunctionPolicy(lambda prompt: "")
    assert build_reflector("self", policy, LineWorld).name == "self"
    assert build_reflector("model", policy, LineWorld, reflector_policy=policy).name == "model"
    assert build_reflector("env", policy, TrapLineWorld).name == "env"
    with pytest.raises(ValueError, match="no diagnose"):
        build_reflector("env", policy, LineWorld)
    with pytest.raises(ValueError, match="reflector_policy"):
        build_reflector("model", policy, LineWorld)
    with pytest.raises(ValueError, match="unknown reflector"):
        build_reflector("oracle", policy, LineWorld)


def test_reflection_round_trips():
    reflection = Reflection(2, "go up", "self", 4, "interval", ("a", "b"), 10, 3)
    assert Reflection.from_dict(reflection.to_dict()) == reflection


def test_a_copy_of_the_prompt_example_is_not_a_reflection():
    from leafe.method.reflect import REFLECTION_EXAMPLE

    policy = FunctionPolicy(lambda prompt: REFLECTION_EXAMPLE.removeprefix("Rollback step:"))
    (reflection,) = PolicyReflector(policy, max_attempts=2).reflect([_query(_steps([("left", "You are at -1.")] * 3))])
    assert reflection.failed and reflection.attempts == 2
