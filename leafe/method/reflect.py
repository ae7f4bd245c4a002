"""Reflection: read an episode's history, name the step that went wrong and what to do instead.

A reflector answers a batch of :class:`ReflectionQuery` (one episode history each) with one
:class:`Reflection` or ``None`` ("nothing to correct") per query. Three reflectors, named in
every artifact:

* ``self``: the acting policy with a reflection prompt (the paper's method);
* ``model``: another policy (any backend), same prompt;
* ``env``: the environment's own diagnosis (``env.diagnose(task, actions)``, e.g. the Sokoban
  solver in :mod:`leafe.envs.sokoban_diagnosis`), for weak models and for tests.

The policy reflectors ask for two labelled lines a 135M model can produce::

    Rollback step: 3
    Experience: Pushing the box left at step 3 put it in a corner. Instead, go around it first.

:func:`parse_reflection` reads them tolerantly. A malformed answer (or a copy of the prompt's
example) is retried with a new seed up to ``max_attempts`` times; then the reflection is
recorded as failed (``rollback_step is None``) and skipped, never raised. The paper does not
publish its reflection prompt; this one is ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from leafe.envs.base import Diagnosis, TextEnv
from leafe.policy.base import GenerationRequest, Policy, Prompt, SamplingParams
from leafe.rollout import derive_seed
from leafe.types import Step, Task

REFLECTORS = ("self", "model", "env")

REFLECTION_RULE = (
    "Your attempt has not solved the task. Find the step where the first mistake was made and say "
    'what to do instead. Answer with one line "Rollback step: <step number>" and then one line '
    '"Experience: <what went wrong and what to do instead, in one or two sentences>".'
)
_EXAMPLE_SUMMARY = "At step 2 moving left walked into a wall and changed nothing. Instead, move up first."
REFLECTION_EXAMPLE = f"Rollback step: 2\nExperience: {_EXAMPLE_SUMMARY}"
_ANSWER_PREFIX = "Rollback step:"
_MAX_SUMMARY_CHARS = 400


@dataclass(frozen=True)
class Reflection:
    """One reflection on an episode history of ``at_step`` steps.

    Attributes:
        rollback_step: the step to redo, 1..``at_step`` (the branch keeps steps before it);
            ``None`` when every attempt was malformed (a failed reflection, kept for the record).
        experience_summary: what went wrong and what to do instead ("" when failed).
        reflector: ``"self"``, ``"model"`` or ``"env"``.
        at_step: how many steps of the episode the reflector saw.
        trigger: why it reflected (``"end"``, ``"interval"``, a trouble signal; see
            :mod:`leafe.method.trigger`); set by the caller.
        raw_texts: the reflector's raw answer of every attempt, in order.
        prompt_tokens: prompt tokens of all attempts (0 for ``env``).
        completion_tokens: generated tokens of all attempts (0 for ``env``).
    """

    rollback_step: int | None
    experience_summary: str
    reflector: str
    at_step: int
    trigger: str = ""
    raw_texts: tuple[str, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def failed(self) -> bool:
        return self.rollback_step is None

    @property
    def attempts(self) -> int:
        return len(self.raw_texts)

    @property
    def model_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "raw_texts": list(self.raw_texts)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reflection:
        return cls(**{**data, "raw_texts": tuple(data.get("raw_texts", ()))})


@dataclass(frozen=True)
class ReflectionQuery:
    """One history to reflect on: ``steps`` are the first ``at_step`` steps of an episode."""

    task: Task
    instruction: str
    initial_observation: str
    steps: tuple[Step, ...]
    seed: int


class Reflector(Protocol):
    """Reflects on many histories at once (the policy reflectors batch their model calls)."""

    name: str

    def reflect(self, queries: Sequence[ReflectionQuery]) -> list[Reflection | None]:
        """One answer per query: a reflection (possibly failed), or ``None`` if nothing is wrong."""
        ...


_NUMBER_WORDS = {
    word: value
    for value, words in enumerate(
        [("zero",), ("one", "first"), ("two", "second"), ("three", "third"), ("four", "fourth"), ("five", "fifth"),
         ("six", "sixth"), ("seven", "seventh"), ("eight", "eighth"), ("nine", "ninth"), ("ten", "tenth"),
         ("eleven", "eleventh"), ("twelve", "twelfth")]
    )
    for word in words
}
_NUMBER = r"(\d+|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r"|last|final)"
_STEP_FIELD = re.compile(
    r"roll\s*-?\s*back(?:\s+(?:to\s+)?(?:step|turn|point))?(?:\s+(?:number|no\.?))?\s*(?:[:=\-]|is|to)?\s*"
    r"(?:(?:at|to)\s+)?(?:the\s+)?(?:step|turn)?\s*#?\s*" + _NUMBER + r"(?:st|nd|rd|th)?\b",
    re.IGNORECASE,
)
_EXPERIENCE_FIELD = re.compile(
    r"(?:experience(?:\s+summary)?|lesson|summary|diagnosis|reflection)\s*[:=\-]\s*", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _clean(text: str) -> str:
    """Markdown emphasis, code marks and underscores (``rollback_step``) become plain text."""
    return re.sub(r"[*`_]+", lambda m: " " if "_" in m.group() else "", text)


def _summary(text: str) -> str:
    """At most two sentences and ``_MAX_SUMMARY_CHARS`` characters, on one line."""
    text = " ".join(text.split()).lstrip(" .,:;-)").strip(" \"'")
    sentences = _SENTENCE_END.split(text)
    return " ".join(sentences[:2])[:_MAX_SUMMARY_CHARS].strip()


def parse_reflection(text: str, num_steps: int) -> tuple[int, str] | None:
    """``(rollback_step, experience_summary)`` from a reflector's answer, or ``None`` if malformed.

    Tolerates case, markdown, surrounding text, number words ("three", "third") and
    "last"/"final" (= ``num_steps``). A step above ``num_steps`` is clamped to ``num_steps``; a
    step below 1, a missing step or an empty experience make the answer malformed. The
    experience is the text after an ``Experience:`` (or ``Lesson:``/``Summary:``) label, else
    the text after the step number, cut to two sentences.
    """
    cleaned = _clean(text)
    step_match = _STEP_FIELD.search(cleaned)
    if step_match is None:
        return None
    word = step_match.group(1).lower()
    step = num_steps if word in ("last", "final") else int(word) if word.isdigit() else _NUMBER_WORDS[word]
    if step < 1:
        return None
    rest = cleaned[step_match.end() :]
    label = _EXPERIENCE_FIELD.search(cleaned, step_match.end()) or _EXPERIENCE_FIELD.search(cleaned)
    if label is not None:
        body = cleaned[label.end() :]
        body = body[: step_match.start() - label.end()] if step_match.start() > label.end() else body
    else:
        body = rest
    body = re.split(r"\n\s*\n", body.strip(), maxsplit=1)[0]
    summary = _summary(body)
    if not re.search(r"[A-Za-z]{2,}", summary):
        return None
    return min(step, num_steps), summary


def numbered_history(initial_observation: str, steps: Sequence[Step], feedback_lines: int | None = 1) -> str:
    """The history as the reflection prompt shows it: start state, numbered steps, current state.

    Each step shows its action (or that the reply had none) and the first ``feedback_lines``
    lines of what came back (``None``: all of it); the start and the current state (when cut
    short) are shown in full.
    """
    parts = [f"Start:\n{initial_observation.strip()}"]
    for number, step in enumerate(steps, start=1):
        lines = step.observation.strip().splitlines()
        result = "\n".join(lines if feedback_lines is None else lines[:feedback_lines])
        action = _shown_action(step.action)
        parts.append(f"Step {number}: {action}\nResult: {result}")
    if steps and feedback_lines is not None and len(steps[-1].observation.strip().splitlines()) > feedback_lines:
        parts.append(f"Now:\n{steps[-1].observation.strip()}")
    return "\n".join(parts)


def _shown_action(action: str | None) -> str:
    """One step's action in the reflection history; a multi-line action (a program) is shown as
    a fenced block, as the acting prompt writes it."""
    if action is None:
        return "(no valid 'Action:' line)"
    if "\n" in action.strip():
        return f"Action:\n```python\n{action.strip(chr(10))}\n```"
    return f"Action: {action}"


def reflection_prompt(prompt_format: str, instruction: str, history: str) -> Prompt:
    """The reflection prompt in the acting prompter's format.

    ``completion``: plain text ending in ``"Rollback step:"`` (the model continues with the
    number); ``chat``: a system message with the rules and a user message with the history.
    """
    rules = f"{REFLECTION_RULE}\nExample answer:\n{REFLECTION_EXAMPLE}"
    if prompt_format == "chat":
        return [
            {"role": "system", "content": f"{instruction.strip()}\n\n{rules}"},
            {"role": "user", "content": f"Your attempt:\n{history}\n\nWhich step went wrong?"},
        ]
    return f"{instruction.strip()}\n\nYour attempt:\n{history}\n\n{rules}\n\n{_ANSWER_PREFIX}"


class PolicyReflector:
    """Reflection by a language model (``self``: the acting policy; ``model``: another one).

    Args:
        policy: the backend that answers the reflection prompt.
        name: ``"self"`` or ``"model"``, recorded in every reflection.
        prompt_format: ``"completion"`` or ``"chat"`` (use the acting prompter's).
        sampling: temperature/top-p/max tokens for reflections.
        max_attempts: answers tried per query before it is recorded as failed.
        feedback_lines: lines of each step's feedback shown (``None``: all).
    """

    def __init__(
        self,
        policy: Policy,
        name: str = "self",
        prompt_format: str = "completion",
        sampling: SamplingParams = SamplingParams(temperature=0.7, max_new_tokens=64),
        max_attempts: int = 3,
        feedback_lines: int | None = 1,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.policy = policy
        self.name = name
        self.prompt_format = prompt_format
        # Small models tend to go on with another history step or a second answer: stop there.
        stop = ("\n\n", "\nStep ", "\nRollback step:") if prompt_format == "completion" else ()
        self.sampling = replace(sampling, stop=tuple(dict.fromkeys(sampling.stop + stop)))
        self.max_attempts = max_attempts
        self.feedback_lines = feedback_lines

    def reflect(self, queries: Sequence[ReflectionQuery]) -> list[Reflection | None]:
        """Reflect on every query; malformed answers are retried (batched) with new seeds."""
        prompts = [
            reflection_prompt(
                self.prompt_format, q.instruction, numbered_history(q.initial_observation, q.steps, self.feedback_lines)
            )
            for q in queries
        ]
        raw: list[list[str]] = [[] for _ in queries]
        tokens = [[0, 0] for _ in queries]
        parsed: list[tuple[int, str] | None] = [None] * len(queries)
        for attempt in range(self.max_attempts):
            todo = [i for i, query in enumerate(queries) if parsed[i] is None and query.steps]
            if not todo:
                break
            requests = [GenerationRequest(prompt=prompts[i], seed=derive_seed(queries[i].seed, attempt)) for i in todo]
            for i, generation in zip(todo, self.policy.generate(requests, self.sampling)):
                text = (_ANSWER_PREFIX if self.prompt_format == "completion" else "") + generation.text
                raw[i].append(text)
                tokens[i][0] += generation.prompt_tokens
                tokens[i][1] += generation.completion_tokens
                answer = parse_reflection(text, len(queries[i].steps))
                parsed[i] = None if answer is not None and answer[1] == _EXAMPLE_SUMMARY else answer  # parroted
        results: list[Reflection | None] = []
        for i, query in enumerate(queries):
            if not query.steps:
                results.append(None)
                continue
            step, summary = parsed[i] if parsed[i] is not None else (None, "")
            results.append(
                Reflection(step, summary, self.name, len(query.steps), "", tuple(raw[i]), tokens[i][0], tokens[i][1])
            )
        return results


Diagnose = Callable[[Task, Sequence[str | None]], Diagnosis | None]


class EnvReflector:
    """Reflection from the environment's own diagnosis (no model calls, no tokens).

    Args:
        diagnose: ``diagnose(task, actions) -> Diagnosis | None`` where ``actions`` has one entry
            per turn (``None`` for a reply without an action), e.g. ``env.diagnose``.
    """

    name = "env"

    def __init__(self, diagnose: Diagnose) -> None:
        self.diagnose = diagnose

    def reflect(self, queries: Sequence[ReflectionQuery]) -> list[Reflection | None]:
        """The diagnosis of each history; ``None`` where the environment finds nothing wrong."""
        results: list[Reflection | None] = []
        for query in queries:
            diagnosis = self.diagnose(query.task, [step.action for step in query.steps]) if query.steps else None
            if diagnosis is None:
                results.append(None)
                continue
            step = min(max(diagnosis.rollback_step, 1), len(query.steps))
            results.append(Reflection(step, diagnosis.summary, self.name, len(query.steps), "", (diagnosis.summary,)))
        return results


def build_reflector(
    name: str,
    policy: Policy,
    make_env: Callable[[], TextEnv],
    prompt_format: str = "completion",
    sampling: SamplingParams = SamplingParams(temperature=0.7, max_new_tokens=64),
    max_attempts: int = 3,
    reflector_policy: Policy | None = None,
) -> Reflector:
    """The reflector called ``name`` (``"self"``, ``"model"`` or ``"env"``).

    ``model`` needs ``reflector_policy``; ``env`` needs an environment with a ``diagnose`` method.
    """
    if name == "self":
        return PolicyReflector(policy, "self", prompt_format, sampling, max_attempts)
    if name == "model":
        if reflector_policy is None:
            raise ValueError("reflector 'model' needs reflector_policy (the other model's backend)")
        return PolicyReflector(reflector_policy, "model", prompt_format, sampling, max_attempts)
    if name == "env":
        env = make_env()
        diagnose = getattr(env, "diagnose", None)
        if not callable(diagnose):
            raise ValueError(f"reflector 'env': {type(env).__name__} has no diagnose(task, actions) method")
        return EnvReflector(diagnose)
    raise ValueError(f"unknown reflector {name!r}; expected one of {', '.join(REFLECTORS)}")
