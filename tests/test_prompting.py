"""Prompt building and action parsing."""

import pytest

from leafe.prompting import Prompter, Turn, missing_action_feedback, parse_action


@pytest.mark.parametrize(
    "completion, action",
    [
        (" The box is left.\nAction: left\n", "left"),
        ("Thought: hmm\n**Action:** Up", "Up"),
        ("Thought: x\naction : `down`", "down"),
        ("Thought: x\nAction: right\nAction: left", "right"),
        ("I will go left", None),
        ("Thought: x\nAction:   \n", None),
        ("", None),
    ],
)
def test_parse_action(completion, action):
    assert parse_action(completion) == action


def test_completion_prompt_window_and_order():
    prompter = Prompter(prompt_format="completion", history_window=1, example=Turn("EX-OBS", "Thought: e\nAction: up"))
    history = [Turn("OBS-1", "Thought: a\nAction: left"), Turn("OBS-2", "Thought: b\nAction: down")]
    prompt = prompter.build("Solve it.", history, "OBS-3")
    assert isinstance(prompt, str)
    assert prompt.endswith("Observation:\nOBS-3\nThought:")
    assert "OBS-1" not in prompt and "(1 earlier steps not shown)" in prompt
    assert prompt.index("Solve it.") < prompt.index("EX-OBS") < prompt.index("OBS-2") < prompt.index("OBS-3")
    assert "\nObservation" in prompter.stop


def test_zero_window_shows_only_current_observation():
    prompter = Prompter(history_window=0)
    prompt = prompter.build("Goal.", [Turn("OLD", "Thought: a\nAction: up")], "NOW")
    assert "OLD" not in prompt and "NOW" in prompt


def test_chat_prompt_alternates_roles():
    prompter = Prompter(prompt_format="chat", history_window=2)
    history = [Turn("OBS-1", "Thought: a\nAction: left")]
    messages = prompter.build("Solve it.", history, "OBS-2")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "Solve it." in messages[0]["content"] and "OBS-2" in messages[-1]["content"]
    assert prompter.stop == ()


def test_reply_keeps_thought_and_action_only():
    prompter = Prompter(prompt_format="completion")
    assert prompter.reply(" go left\nAction: left\nrambling more") == "Thought: go left\nAction: left"
    assert Prompter(prompt_format="chat").reply("Thought: t\nAction: up\nextra") == "Thought: t\nAction: up"


def test_missing_action_feedback_keeps_state_visible():
    text = missing_action_feedback("MAP")
    assert "Action:" in text and text.endswith("MAP")


def test_window_larger_than_history_shows_everything():
    history = [Turn(f"OBS-{i}", f"Thought: t\nAction: a{i}") for i in range(7)]
    prompt = Prompter(history_window=10).build("Goal.", history, "NOW")
    assert all(f"OBS-{i}" in prompt for i in range(7)) and "not shown" not in prompt
    prompt = Prompter(history_window=3).build("Goal.", history, "NOW")
    assert "OBS-3" not in prompt and all(f"OBS-{i}" in prompt for i in (4, 5, 6)) and "(4 earlier steps not shown)" in prompt
