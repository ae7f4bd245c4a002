"""Prompt building and action parsing."""

import pytest

from leafe.prompting import Prompter, Turn, format_reply, missing_action_feedback, parse_action, parse_code_action


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


@pytest.mark.parametrize(
    "completion, program",
    [
        (" add two\nAction:\n```python\ndef f(x):\n\n    return x + 2\n```\nmore", "def f(x):\n\n    return x + 2"),
        (" cut off\nAction:\n```python\nprint(1)\nprint(", "print(1)\nprint("),
        (" no fence\nAction: print(input())", "print(input())"),
        (" fence only\n```py\nx = 1\n```", "x = 1"),
        ("Thought: t\n**Action:**\n```\nprint(2)\n```", "print(2)"),
        (" nothing here", None),
        (" empty\nAction:\n```python\n\n```", None),
    ],
)
def test_parse_code_action(completion, program):
    assert parse_code_action(completion) == program
    assert Prompter(action_format="code").parse_action(completion) == program


def test_code_format_prompt_stops_and_replies():
    prompter = Prompter(action_format="code", history_window=2)
    # A program has blank lines: only the closing fence ends a reply, never a blank line.
    assert "\n\n" not in prompter.stop and "\n```\n" in prompter.stop
    completion = " add one\nAction:\n```python\ndef f(x):\n\n    return x + 1"  # stop string removed
    assert prompter.reply(completion) == "Thought: add one\nAction:\n```python\ndef f(x):\n\n    return x + 1\n```"
    assert prompter.reply(" just talk") == "Thought: just talk"
    prompt = prompter.build("Write code.", [], "Problem: P")
    assert "```python code block" in prompt and 'one line "Action: <action>"' not in prompt
    feedback = prompter.missing_action_feedback("Problem: P")
    assert "no program after 'Action:'" in feedback and feedback.endswith("Problem: P")
    with pytest.raises(ValueError, match="action_format"):
        Prompter(action_format="xml")


def test_line_format_is_unchanged_by_the_code_format():
    assert Prompter().stop == ("\nObservation", "\nThought:", "\n\n")
    assert format_reply("go", "left") == "Thought: go\nAction: left"
    assert format_reply("write", "```python\nx = 1\n```", "code") == "Thought: write\nAction:\n```python\nx = 1\n```"
    assert format_reply("write", "x = 1", "code") == "Thought: write\nAction:\n```python\nx = 1\n```"
