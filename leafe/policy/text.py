"""Prompt rendering, tokenization and completion bookkeeping shared by the in-process backends.

Both the transformers backend and the native engine turn a :class:`Prompt` into token ids the same
way and turn generated ids back into a :class:`Generation` the same way, so that their outputs can
be compared token for token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leafe.policy.base import Generation, Prompt, SamplingParams


@dataclass(frozen=True)
class TokenGeneration:
    """A :class:`Generation` with its token ids.

    Attributes:
        generation: the completion as the Policy protocol reports it.
        prompt_token_ids: the prompt's tokens, ``(prompt_tokens,)``.
        completion_token_ids: generated tokens up to and including the end-of-sequence token or
            the token completing a stop string, ``(completion_tokens,)``.
    """

    generation: Generation
    prompt_token_ids: list[int]
    completion_token_ids: list[int]


def check_params(params: SamplingParams) -> None:
    """Reject sampling parameters no backend can honour, naming the field."""
    if params.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")


def eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """End-of-sequence ids: the model's ``generation_config.eos_token_id`` (int or list) and the
    tokenizer's eos token, deduplicated in that order."""
    eos: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in ([config_eos] if isinstance(config_eos, int) else list(config_eos or [])) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in eos:
            eos.append(int(value))
    if not eos:
        raise ValueError("the tokenizer has no eos token and the model's generation_config none either")
    return tuple(eos)


class PromptCodec:
    """Prompt -> text -> ids, and generated ids -> :class:`TokenGeneration`, for one tokenizer.

    A string prompt is tokenized with the tokenizer's special tokens (e.g. a BOS for Llama-3
    tokenizers, none for SmolLM2); a rendered chat prompt without (the template writes its own), so
    ``prompt_tokens`` may count a BOS that ``prompt_text`` does not show.
    """

    def __init__(self, tokenizer: Any, model_name: str = "") -> None:
        self.tokenizer = tokenizer
        self.model_name = model_name

    def render(self, prompt: Prompt) -> str:
        """The exact text the model is conditioned on: a string as-is, chat messages through the
        tokenizer's chat template with the assistant generation prompt appended."""
        if isinstance(prompt, str):
            return prompt
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.model_name or 'this tokenizer'} has no chat template; pass a string prompt")
        rendered = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        if not isinstance(rendered, str):  # pragma: no cover - defensive across transformers versions
            raise TypeError(f"apply_chat_template returned {type(rendered).__name__}, expected str")
        return rendered

    def encode(self, prompt: Prompt, text: str) -> list[int]:
        """Token ids of the rendered ``text`` of ``prompt``; raises on an empty prompt."""
        ids = self.tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"]
        if not ids:
            raise ValueError("empty prompt: the model needs at least one prompt token")
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        """Generated ids -> text, special tokens dropped (the text stop strings are matched on)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def has_stop(self, generated: list[int], stop: tuple[str, ...]) -> bool:
        """Whether the decoded generated ids already contain one of the stop strings."""
        if not stop:
            return False
        text = self.decode(generated)
        return any(s in text for s in stop if s)

    def finish(
        self, prompt_text: str, prompt_ids: list[int], completion: list[int], stopped: bool, params: SamplingParams
    ) -> TokenGeneration:
        """Package generated ids: decode, cut the text before the first stop string, and set
        ``finish_reason`` to ``"stop"`` (eos or stop string) or ``"length"``."""
        text = self.decode(completion)
        cuts = [pos for pos in (text.find(s) for s in params.stop if s) if pos >= 0]
        if cuts:
            text = text[: min(cuts)]
            stopped = True
        generation = Generation(
            text=text,
            prompt_text=prompt_text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(completion),
            finish_reason="stop" if stopped else "length",
        )
        return TokenGeneration(generation, list(prompt_ids), list(completion))
