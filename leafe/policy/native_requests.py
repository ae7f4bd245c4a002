"""What the native engine (:mod:`leafe.policy.native`) serves and counts: a request in flight, a
finished sequence's parked slot, the engine's counters, and the stream clients submit to."""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from leafe.policy.base import GenerationRequest, SamplingParams
from leafe.policy.sampling import seeded_generator
from leafe.policy.text import TokenGeneration

if TYPE_CHECKING:
    from leafe.policy.native import NativePolicy

__all__ = ["EngineStats", "NativeStream"]

_stream_ids = itertools.count()


@dataclass
class EngineStats:
    """Token and time counters, cumulative over the engine's life.

    Attributes:
        prompt_tokens: prompt tokens of all requests.
        cached_prompt_tokens: prompt positions not computed: copied from the prefix cache or from
            another slot, or kept in a claimed parked slot.
        computed_prompt_tokens: prompt positions run through the model (includes shared prefixes
            computed once for several prompts).
        generated_tokens: sampled tokens.
        prefill_seconds: wall time in prompt-only forward passes (first admissions, big ones).
        decode_seconds: wall time in decode passes, including the prompts admitted into them.
        requests: requests served.
        decode_steps: batched decode forward passes (generated tokens / steps = mean batch).
        cache_evictions: prefix-cache entries dropped for lack of memory.
        draft_tokens: draft tokens run through the model for verification.
        accepted_draft_tokens: draft tokens kept (the model sampled the same token).
        slot_reuses: requests that continued in the slot a finished sequence left parked (their
            reused positions are counted in ``cached_prompt_tokens`` but copied from nowhere).
    """

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    computed_prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    requests: int = 0
    decode_steps: int = 0
    cache_evictions: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    slot_reuses: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass(eq=False)  # compared by identity
class _Sequence:
    """A request in flight. ``length`` = positions whose keys/values are in the slot."""

    stream: NativeStream
    key: Hashable
    prompt_text: str
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    slot: int = -1
    length: int = 0
    generated: list[int] = field(default_factory=list)
    stopped: bool = False  # ended by eos or a stop string (else by max_new_tokens)
    done: bool = False  # ended: retired at the end of the step
    current: bool = True  # its keys/values come from the current weights (see weights_changed)

    def __post_init__(self) -> None:
        self.prompt_array = np.asarray(self.prompt_ids, dtype=np.int64)

    @property
    def reach(self) -> int:
        """Positions its slot may need: the prompt and ``max_new_tokens``."""
        return len(self.prompt_ids) + self.params.max_new_tokens


@dataclass
class _Parked:
    """A finished sequence's keys/values left in its slot for a continuation to claim."""

    tokens: np.ndarray  # (length,) the ids whose keys/values the slot's first positions hold
    step: int  # the scheduler step it was parked at


class NativeStream:
    """Requests with one set of sampling parameters, submitted at any time and collected as they
    finish (continuous batching across the turns of many episodes: an episode submits its next
    turn as soon as its environment has stepped, without waiting for the others)."""

    def __init__(self, engine: NativePolicy, params: SamplingParams) -> None:
        self.engine = engine
        self.params = params
        self.pending = 0
        self.id = next(_stream_ids)

    def submit(self, key: Hashable, request: GenerationRequest) -> None:
        """Queue ``request``; :meth:`next_finished` returns it under ``key``."""
        codec = self.engine.codec
        text = codec.render(request.prompt)
        ids = codec.encode(request.prompt, text)
        generator = seeded_generator(request.seed, self.engine.net.param.device)
        self.engine._enqueue(_Sequence(self, key, text, ids, self.params, generator))
        self.pending += 1

    def close(self) -> None:
        """Abandon whatever is still pending (e.g. after an error); the engine forgets it."""
        self.engine._cancel(self)
        self.pending = 0

    def next_finished(self) -> list[tuple[Hashable, TokenGeneration]]:
        """Generate until at least one submitted request is complete; return every complete one
        (``[]`` when nothing is pending)."""
        if self.pending == 0:
            return []
        done = self.engine._collect(self)
        self.pending -= len(done)
        codec = self.engine.codec
        return [
            (seq.key, codec.finish(seq.prompt_text, seq.prompt_ids, seq.generated, seq.stopped, self.params))
            for seq in done
        ]
