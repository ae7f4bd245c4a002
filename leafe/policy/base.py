"""The policy protocol every inference backend implements.

A backend turns a batch of prompts into a batch of completions. Prompts are either plain text
(completion-style, e.g. few-shot ReAct ending in ``"Thought:"``) or a list of chat messages
(``[{"role": "system"|"user"|"assistant", "content": str}, ...]``) that the backend renders with
the model's chat template. Each request carries its own seed, so a request's sample does not
depend on what else happens to be in the batch (needed for resumable, reproducible runs).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

ChatMessages = list[dict[str, str]]
Prompt = Union[str, ChatMessages]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    Attributes:
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass in (0, 1].
        max_new_tokens: hard cap on generated tokens per request.
        stop: generation ends at the first occurrence of any of these strings; the returned
            text is cut before it.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete, with the seed that makes its sample reproducible."""

    prompt: Prompt
    seed: int


@dataclass(frozen=True)
class Generation:
    """A completion.

    Attributes:
        text: generated text, cut before the first stop string.
        prompt_text: the exact prompt text the model was conditioned on (chat template applied).
        prompt_tokens: number of prompt tokens.
        completion_tokens: number of generated tokens (including a matched stop string's tokens).
        finish_reason: ``"stop"`` (stop string or end-of-sequence) or ``"length"``.
    """

    text: str
    prompt_text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Policy(Protocol):
    """An inference backend."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Complete every request; the i-th generation answers the i-th request."""
        ...


class GenerationStream(Protocol):
    """Requests submitted at any time and collected as they finish.

    The rollout loop uses it so that an engine with continuous batching can start an episode's
    next turn while other episodes are still generating.
    """

    pending: int

    def submit(self, key: Hashable, request: GenerationRequest) -> None:
        """Queue ``request``; it is returned by :meth:`next_finished` under ``key``."""
        ...

    def next_finished(self) -> list[tuple[Hashable, Any]]:
        """Block until at least one submitted request is complete and return every complete one
        as ``(key, result)``, where ``result.generation`` is its :class:`Generation`
        (``[]`` when nothing is pending)."""
        ...

    def close(self) -> None:
        """Abandon pending requests (called when the caller stops early, e.g. on an error)."""
        ...


@runtime_checkable
class StreamingPolicy(Protocol):
    """A backend that serves :class:`GenerationStream` natively."""

    def stream(self, params: SamplingParams) -> GenerationStream: ...


@dataclass(frozen=True)
class _Done:
    generation: Generation


class BatchStream:
    """:class:`GenerationStream` over a batch-only policy: :meth:`next_finished` completes every
    pending request in one ``generate`` call (one round of a round-based loop)."""

    def __init__(self, policy: Policy, params: SamplingParams) -> None:
        self.policy = policy
        self.params = params
        self._submitted: list[tuple[Hashable, GenerationRequest]] = []

    @property
    def pending(self) -> int:
        return len(self._submitted)

    def submit(self, key: Hashable, request: GenerationRequest) -> None:
        self._submitted.append((key, request))

    def close(self) -> None:
        self._submitted = []

    def next_finished(self) -> list[tuple[Hashable, _Done]]:
        batch, self._submitted = self._submitted, []
        if not batch:
            return []
        generations = self.policy.generate([request for _, request in batch], self.params)
        return [(key, _Done(generation)) for (key, _), generation in zip(batch, generations)]


def open_stream(policy: Policy, params: SamplingParams) -> GenerationStream:
    """The policy's own stream if it has one, else a :class:`BatchStream` around ``generate``."""
    if isinstance(policy, StreamingPolicy):
        return policy.stream(params)
    return BatchStream(policy, params)
