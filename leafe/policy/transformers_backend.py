"""Policy backend on Hugging Face transformers (``AutoModelForCausalLM.generate``).

Sampling is seeded per request so that each request's sample depends only on its own seed, never
on the global torch RNG or on which other requests share its batch. :class:`SeededSampler` (a
``LogitsProcessor``) applies temperature and top-p, draws each row's token by inverting its
cumulative distribution with one uniform from that row's ``torch.Generator`` (seeded with the
request seed, advanced once per generated token; :mod:`leafe.policy.sampling`), and returns scores
that are -inf everywhere but at the drawn token. ``generate`` then runs with ``do_sample=False``,
so its greedy argmax takes the drawn token: an exact sample of the filtered softmax. Temperature 0
is plain greedy decoding.

``generate`` is also kept from applying anything of the model's own ``generation_config`` (top_k,
temperature, repetition penalty, suppressed tokens, ...): the policy passes a complete
``GenerationConfig`` and swaps a clean config in for the duration of the call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from leafe.policy.base import Generation, GenerationRequest, Prompt, SamplingParams
from leafe.policy.sampling import sample_next, seeded_generator
from leafe.policy.text import PromptCodec, TokenGeneration, check_params, eos_token_ids
from leafe.policy.embedded import DEFAULT_MODEL, resolve_model

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` if available, else ``cpu``; anything else -> ``torch.device(device)``.

    Raises:
        ConfigError: naming ``policy.device``, for a CUDA or MPS device this torch cannot use
            (rather than failing deep inside the first transfer, or training on the CPU).
    """
    from leafe.config import ConfigError

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise ConfigError(f"policy.device: {device!r} requested, but torch sees {count} CUDA device(s) "
                              f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use auto or cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"policy.device: {device!r} requested, but MPS is not available here; use auto or cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on a CUDA device that supports it, else float32.

    float32 on CPU on purpose: bf16 is not faster on CPUs without AMX (measured: generation same or
    slower, SFT ~1.5x slower).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}") from None


def load_model(model: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for inference: resolve the name (:func:`resolve_model`), pick
    device and dtype (:func:`resolve_device`, :func:`resolve_dtype`), eval mode."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    path = resolve_model(model)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(torch_device).eval()
    logger.info("Loaded %s (%s, %s) in %.1f s", path, torch_device, torch_dtype, time.perf_counter() - start)
    return hf_model, tokenizer


class SeededSampler(LogitsProcessor):
    """Per-row seeded sampling as a logits processor, for use with ``generate(do_sample=False)``.

    For each row ``i`` it draws a token from ``softmax(filter_top_p(scores[i] / T))`` with the next
    uniform of ``generators[i]`` (seeded with ``seeds[i]``; :func:`leafe.policy.sampling.sample_next`)
    and returns scores that are 0 at that token and -inf elsewhere, so greedy decoding picks it.
    Row ``i`` consumes exactly one uniform per call, so its t-th token depends only on its seed,
    its logits and t: not on the batch it is in.

    Shapes: ``input_ids: (batch, seq_len)``, ``scores: (batch, vocab)`` -> ``(batch, vocab)``
    float32; ``batch == len(seeds)``.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        temperature: float,
        top_p: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        if temperature <= 0:
            raise ValueError("SeededSampler needs temperature > 0 (use greedy decoding for 0)")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.device = torch.device(device)
        self.generators = [seeded_generator(seed, self.device) for seed in seeds]

    def draw(self, scores: torch.Tensor) -> torch.Tensor:
        """The next token of every row, ``scores: (batch, vocab)`` -> ``(batch,)`` int64."""
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"got {scores.shape[0]} rows of scores for {len(self.generators)} seeds")
        return sample_next(scores, self.generators, self.temperature, self.top_p)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        picked = self.draw(scores)
        out = torch.full(scores.shape, float("-inf"), dtype=torch.float32, device=scores.device)
        return out.scatter_(1, picked[:, None], 0.0)


class _FinishTracker(StoppingCriteria):
    """Stops a row at an end-of-sequence token or once its generated text contains a stop string,
    and records at which step each row finished (so padding after the end is never counted).

    Stop strings are matched on the decoded *generated* tokens only (``skip_special_tokens=True``,
    the same decoding as the returned text), so a match can never start inside the prompt.

    ``input_ids: (batch, prompt_len + step)`` -> ``(batch,)`` bool; ``finish_step[i]`` is the number
    of generated tokens of row ``i`` up to and including the one that ended it, or None.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, eos_ids: Sequence[int], stop: Sequence[str], batch: int):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.eos_ids = frozenset(eos_ids)
        self.stop = tuple(s for s in stop if s)
        self.finish_step: list[int | None] = [None] * batch

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        step = input_ids.shape[1] - self.prompt_len
        new_tokens = input_ids[:, -1].tolist()
        done = []
        for row, token in enumerate(new_tokens):
            if self.finish_step[row] is None:
                if token in self.eos_ids or (self.stop and self._has_stop(input_ids[row, self.prompt_len :])):
                    self.finish_step[row] = step
            done.append(self.finish_step[row] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _has_stop(self, generated: torch.Tensor) -> bool:
        text = self.tokenizer.decode(generated.tolist(), skip_special_tokens=True)
        return any(s in text for s in self.stop)


class TransformersPolicy:
    """The Policy protocol on a transformers causal LM.

    Args:
        model: ``"embedded"``/``"smollm2-135m-instruct"``, a local folder or a hub id; see
            :func:`leafe.policy.embedded.resolve_model`.
        device: ``"auto"`` (cuda if available, else cpu), ``"cpu"``, ``"cuda:0"``, ...
        dtype: ``"auto"`` (bfloat16 on CUDA with bf16 support, else float32), ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or a ``torch.dtype``.
        max_batch_size: at most this many requests go through one ``generate`` call.

    Requests are sorted by prompt length and cut into chunks of ``max_batch_size`` (less padding),
    left-padded, and the results are returned in input order. A string prompt is tokenized with the
    tokenizer's special tokens (e.g. a BOS for Llama-3 tokenizers, none for SmolLM2); a rendered
    chat prompt without (the template writes its own), so ``prompt_tokens`` may count a BOS that
    ``prompt_text`` does not show. Sampling is seeded per request
    (see :class:`SeededSampler`), so a request's text does not depend on the rest of the batch.
    """

    name = "transformers"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
    ) -> None:
        hf_model, tokenizer = load_model(model, device, dtype)
        self._setup(hf_model, tokenizer, max_batch_size, model_name=model)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, max_batch_size: int = 16) -> TransformersPolicy:
        """Wrap an already-built ``(model, tokenizer)`` pair (e.g. a tiny random model in tests, or
        a model being fine-tuned). The model is used on the device and dtype it already has, in
        eval mode during ``generate`` (its train/eval mode is restored afterwards)."""
        policy = cls.__new__(cls)
        policy._setup(model, tokenizer, max_batch_size, model_name=getattr(model, "name_or_path", "") or "")
        return policy

    def _setup(self, model: Any, tokenizer: Any, max_batch_size: int, model_name: str) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = int(max_batch_size)
        self.model_name = model_name
        self.device = next(model.parameters()).device
        self.codec = PromptCodec(tokenizer, model_name)
        eos = self.eos_token_ids = eos_token_ids(model, tokenizer)
        self.pad_token_id: int = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos[0]
        bos = tokenizer.bos_token_id
        # Everything generate() may read, explicitly; swapped in for model.generation_config during
        # a call so that nothing of the model's own config (top_k, penalties, ...) leaks in.
        self._clean_generation_config = GenerationConfig(
            bos_token_id=bos, eos_token_id=list(self.eos_token_ids), pad_token_id=self.pad_token_id
        )
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ prompts

    def render_prompt(self, prompt: Prompt) -> str:
        """The exact text the model is conditioned on (see :meth:`PromptCodec.render`)."""
        return self.codec.render(prompt)

    def weights_changed(self) -> None:
        """Nothing to forget: every call encodes its prompts with the current weights."""

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Complete every request; the i-th generation answers the i-th request."""
        return [result.generation for result in self.generate_tokens(requests, params)]

    def generate_tokens(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[TokenGeneration]:
        """Like :meth:`generate`, also returning prompt and completion token ids."""
        check_params(params)
        texts = [self.codec.render(request.prompt) for request in requests]
        prompt_ids = [self.codec.encode(request.prompt, text) for request, text in zip(requests, texts)]
        completions: list[tuple[list[int], bool]] = [([], False)] * len(requests)
        if params.max_new_tokens > 0:
            order = sorted(range(len(requests)), key=lambda i: len(prompt_ids[i]))
            for start in range(0, len(order), self.max_batch_size):
                chunk = order[start : start + self.max_batch_size]
                results = self._generate_chunk(
                    [prompt_ids[i] for i in chunk], [requests[i].seed for i in chunk], params
                )
                for i, result in zip(chunk, results):
                    completions[i] = result
        return [
            self.codec.finish(text, ids, completion, stopped, params)
            for text, ids, (completion, stopped) in zip(texts, prompt_ids, completions)
        ]

    def _generate_chunk(
        self, prompts: list[list[int]], seeds: list[int], params: SamplingParams
    ) -> list[tuple[list[int], bool]]:
        """Run one ``generate`` call on up to ``max_batch_size`` tokenized prompts.

        Builds ``input_ids`` and ``attention_mask`` of shape ``(batch, prompt_len)``, left-padded with
        the pad token (``prompt_len`` = longest prompt of the chunk). ``generate`` returns
        ``(batch, prompt_len + steps)`` with ``steps <= max_new_tokens``. Returns, per row, the
        generated ids up to its end and whether it ended by eos/stop string (True) or length.
        """
        batch, prompt_len = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch, prompt_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, prompt_len), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, prompt_len - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, prompt_len - len(ids) :] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)

        processors = LogitsProcessorList()
        if params.temperature > 0:
            processors.append(SeededSampler(seeds, params.temperature, params.top_p, device=self.device))
        tracker = _FinishTracker(self.tokenizer, prompt_len, self.eos_token_ids, params.stop, batch)
        generation_config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=False,  # SeededSampler leaves one finite score: greedy takes the sample
            num_beams=1,
            num_return_sequences=1,
            bos_token_id=self._clean_generation_config.bos_token_id,
            eos_token_id=list(self.eos_token_ids),
            pad_token_id=self.pad_token_id,
            use_cache=True,
            return_dict_in_generate=False,
        )
        with self._lock, torch.inference_mode():
            own_config, was_training = self.model.generation_config, self.model.training
            self.model.generation_config = self._clean_generation_config
            self.model.eval()
            try:
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=generation_config,
                    logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([tracker]),
                )
            finally:
                self.model.generation_config = own_config
                self.model.train(was_training)
        generated = output[:, prompt_len:].tolist()  # (batch, steps)
        results = []
        for row in range(batch):
            end = tracker.finish_step[row]
            if end is None:
                results.append((generated[row][: params.max_new_tokens], False))
            else:
                results.append((generated[row][:end], True))
        return results
