"""ReAct prompts and the action parser.

The model answers every turn with

    Thought: <brief reasoning>
    Action: <action>

Two prompt formats:

* ``completion`` (default for the embedded 135M model): a plain few-shot transcript ending in
  ``"Thought:"``. Measured here (``../shared/MEASURED.md``), SmolLM2-135M follows this format
  far more often than the same content wrapped in its chat template.
* ``chat``: a system message with the instructions, then alternating user (observation) and
  assistant (reply) messages, rendered by the backend with the model's chat template. The usual
  choice for larger instruction-tuned models.

The prompt holds the task statement, an optional one-step worked example, optional experience
summaries (lessons from earlier attempts, LEAFE stage 1), the last ``history_window`` turns and
the current observation.

Environments whose actions are whole programs (``action_format = "code"``, e.g. the coding
environment) get ``Action:`` followed by a fenced ```python block instead of one line; the
program is the content of that block, and blank lines inside it do not end the reply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from leafe.envs.base import ACTION_FORMATS, TextEnv, code_block, expert_actions
from leafe.policy.base import ChatMessages, Prompt
from leafe.types import Task

FORMAT_RULE = 'Answer with one line "Thought: <brief reasoning>" and then one line "Action: <action>".'
CODE_FORMAT_RULE = (
    'Answer with one line "Thought: <brief reasoning>", then a line "Action:" followed by your whole '
    "program in a ```python code block."
)
EXPERIENCE_HEADER = "Lessons from your earlier attempts at this task:"

_ACTION_PATTERN = re.compile(r"^\W*action\W*:\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_ACTION_MARK = re.compile(r"^\W*action\W*:[ \t]*", re.IGNORECASE | re.MULTILINE)


def parse_action(completion: str) -> str | None:
    """The action of a ReAct reply: the text after the first ``Action:`` line, or ``None``.

    Tolerates markdown decoration (``**Action:** left``), case and surrounding whitespace.
    Returns ``None`` when there is no ``Action:`` line or it is empty.
    """
    match = _ACTION_PATTERN.search(completion)
    if match is None:
        return None
    action = match.group(1).strip().strip("*`\"'").strip()
    return action or None


def parse_code_action(completion: str) -> str | None:
    """The program of a ReAct reply in the ``code`` format, or ``None``.

    The program is the first fenced code block after the ``Action:`` line (its closing fence
    may be missing when the reply was cut off); without a fence, the text after ``Action:``;
    without an ``Action:`` line, the first fenced block anywhere.
    """
    mark = _ACTION_MARK.search(completion)
    rest = completion[mark.end() :] if mark else completion
    program = code_block(rest)
    if program is None and mark is not None:
        program = rest
    if program is None or not program.strip():
        return None
    return program.strip("\n")


def missing_action_feedback(observation: str, action_format: str = "line") -> str:
    """The observation shown after a reply without a parseable action (state unchanged)."""
    if action_format == "code":
        return f"Your reply had no program after 'Action:', so nothing happened. {CODE_FORMAT_RULE}\n{observation}"
    return f"Your reply had no 'Action:' line, so nothing happened. {FORMAT_RULE}\n{observation}"


def format_reply(thought: str, action: str, action_format: str = "line") -> str:
    """A well-formed reply: ``Thought: ...`` then the action (a fenced block in ``code`` format)."""
    if action_format == "code":
        program = code_block(action)
        program = (action if program is None else program).strip("\n")
        return f"Thought: {thought}\nAction:\n```python\n{program}\n```"
    return f"Thought: {thought}\nAction: {action}"


@dataclass(frozen=True)
class Turn:
    """One past turn as the prompt shows it."""

    observation: str
    reply: str


@dataclass(frozen=True)
class Prompter:
    """Builds the prompt for the next turn and normalises the model's replies.

    Attributes:
        prompt_format: ``"completion"`` or ``"chat"``.
        history_window: how many past turns the prompt shows (0 = only the current observation).
        example: an optional worked example (observation, reply) shown before the episode.
        action_format: ``"line"`` (one-line actions) or ``"code"`` (a program in a code block),
            as the environment declares (:func:`leafe.envs.base.action_format`).
    """

    prompt_format: str = "completion"
    history_window: int = 2
    example: Turn | None = None
    action_format: str = "line"

    def __post_init__(self) -> None:
        if self.action_format not in ACTION_FORMATS:
            raise ValueError(f"action_format must be one of {ACTION_FORMATS}, got {self.action_format!r}")

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings: the model must not write the next observation itself. A program may
        contain blank lines, so in ``code`` format the reply ends at the closing fence instead
        (an opening fence carries a language tag, ```` ```python ````, so it does not match)."""
        if self.prompt_format != "completion":
            return ()
        return ("\nObservation", "\nThought:", "\n```\n") if self.action_format == "code" else ("\nObservation", "\nThought:", "\n\n")

    def parse_action(self, completion: str) -> str | None:
        """The action of a reply in this prompter's action format (``None``: no action)."""
        return parse_code_action(completion) if self.action_format == "code" else parse_action(completion)

    def missing_action_feedback(self, observation: str) -> str:
        """What the agent sees after a reply without an action."""
        return missing_action_feedback(observation, self.action_format)

    def reply(self, completion: str) -> str:
        """The reply as later prompts show it: ``Thought: ...`` up to the ``Action:`` line (in
        ``code`` format: the thought and the program in a closed code block)."""
        text = completion.strip()
        if self.prompt_format == "completion":
            text = "Thought: " + text
        if self.action_format == "code":
            program = parse_code_action(text)
            if program is None:
                return text
            mark = _ACTION_MARK.search(text)
            before = text[: mark.start()] if mark else text[: text.find("```")]
            thought = before.strip().removeprefix("Thought:").strip()
            return format_reply(thought, program, "code")
        lines = text.splitlines()
        for index, line in enumerate(lines):
            if parse_action(line) is not None:
                return "\n".join(lines[: index + 1])
        return text

    def build(
        self, instruction: str, history: Sequence[Turn], observation: str, experience: Sequence[str] = ()
    ) -> Prompt:
        """The prompt for the next turn, given the full history of the episode so far.

        ``experience``: summaries of earlier attempts, shown as a list of lessons before the
        history (completion format) or at the end of the system message (chat format).
        """
        shown = list(history[max(0, len(history) - self.history_window) :]) if self.history_window else []
        omitted = len(history) - len(shown)
        lessons = "\n".join([EXPERIENCE_HEADER] + [f"- {text.strip()}" for text in experience]) if experience else ""
        if self.prompt_format == "chat":
            return self._chat(instruction, shown, omitted, observation, lessons)
        return self._completion(instruction, shown, omitted, observation, lessons)

    def _header(self, instruction: str) -> str:
        return f"{instruction.strip()}\n{CODE_FORMAT_RULE if self.action_format == 'code' else FORMAT_RULE}"

    def _completion(self, instruction: str, shown: list[Turn], omitted: int, observation: str, lessons: str) -> str:
        parts = [self._header(instruction)]
        if self.example is not None:
            now = "Now your problem." if self.action_format == "code" else "Now your game."
            parts.append(f"Example:\nObservation:\n{self.example.observation}\n{self.example.reply}\n\n{now}")
        if lessons:
            parts.append(lessons)
        if omitted:
            parts.append(f"({omitted} earlier steps not shown)")
        for turn in shown:
            parts.append(f"Observation:\n{turn.observation}\n{turn.reply}")
        parts.append(f"Observation:\n{observation}\nThought:")
        return "\n\n".join(parts)

    def _chat(self, instruction: str, shown: list[Turn], omitted: int, observation: str, lessons: str) -> ChatMessages:
        system = self._header(instruction)
        if self.example is not None:
            system += f"\n\nExample:\nObservation:\n{self.example.observation}\n{self.example.reply}"
        if lessons:
            system += f"\n\n{lessons}"
        messages = [{"role": "system", "content": system}]
        for index, turn in enumerate(shown):
            prefix = f"({omitted} earlier steps not shown)\n" if index == 0 and omitted else ""
            messages.append({"role": "user", "content": f"{prefix}Observation:\n{turn.observation}"})
            messages.append({"role": "assistant", "content": turn.reply})
        prefix = f"({omitted} earlier steps not shown)\n" if not shown and omitted else ""
        messages.append({"role": "user", "content": f"{prefix}Observation:\n{observation}"})
        return messages


def example_from_expert(env: TextEnv, task: Task, action_format: str = "line") -> Turn | None:
    """A one-step worked example from the environment's expert demonstration of ``task``.

    Returns ``None`` when the environment has no demonstrations.
    """
    actions = expert_actions(env, task)
    if not actions:
        return None
    observation, _info = env.reset(task)
    return Turn(observation=observation, reply=expert_reply(actions[0], action_format))


def expert_reply(action: str, action_format: str = "line") -> str:
    """The reply shown for an expert action (demonstrations have no thoughts: a fixed one)."""
    if action_format == "code":
        return format_reply("I write a complete program that solves the problem.", action, "code")
    return format_reply(f"Looking at the positions, '{action}' brings me closer to the goal.", action)
