"""Policy backend over any OpenAI-compatible HTTP server: vLLM serve, SGLang, llama.cpp server,
Ollama, ``leafe serve``, or a hosted API.

String prompts go to ``POST {base_url}/completions``, chat prompts to ``/chat/completions``. Each
request carries its seed (``seed``), so servers that honour per-request seeds (vLLM, SGLang,
``leafe serve``) reproduce samples; hosted APIs treat it as best effort. llama.cpp's server
(llama-cpp-python 0.3.36, tested) honours it from the same cache state only: a prompt evaluated
afresh and the same prompt served from its prompt cache can sample differently at near-tied tokens.

Failure handling: a request gets ``timeout_s`` per attempt; a timeout, a refused connection, HTTP
429 or 5xx is retried up to ``max_retries`` times with exponential backoff (0.5 s, 1 s, 2 s, ...
capped at 8 s); any other HTTP error, or running out of retries, raises :class:`BackendError` with
the URL and the server's message. Requests run ``max_concurrent`` at a time in threads; the
:meth:`OpenAIPolicy.stream` interface returns each completion as soon as it arrives, so episodes
advance independently. The rollout loop records every finished episode before the error
propagates, so a rerun resumes where the server died.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx

from leafe.policy.base import Generation, GenerationRequest, SamplingParams
from leafe.policy.errors import BackendError
from leafe.policy.text import check_params

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MAX_BACKOFF_S = 8.0


@dataclass(frozen=True)
class HTTPResult:
    """What a stream returns for one request."""

    generation: Generation


def _render_chat(messages: Sequence[dict[str, str]]) -> str:
    """A readable record of a chat prompt (the server applies its own template, unseen here)."""
    return "\n".join(f"<|{m.get('role', '')}|>\n{m.get('content', '')}" for m in messages)


class OpenAIPolicy:
    """The Policy protocol over an OpenAI-compatible server.

    Args:
        base_url: the API root including the version, e.g. ``http://localhost:8000/v1``.
        model: the model name the server knows (vLLM: the served path or ``--served-model-name``).
        api_key_env: environment variable holding the API key (unset: no Authorization header).
        max_concurrent: requests in flight at once.
        timeout_s: per attempt, connect + read.
        max_retries: extra attempts after a retryable failure.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrent: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 4,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.max_retries = int(max_retries)
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=max_concurrent, max_keepalive_connections=max_concurrent),
        )
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="leafe-http")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # ------------------------------------------------------------------ one request

    def _payload(self, request: GenerationRequest, params: SamplingParams) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": int(request.seed) % (1 << 63),
            "n": 1,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if isinstance(request.prompt, str):
            body["prompt"] = request.prompt
            return "/completions", body
        body["messages"] = list(request.prompt)
        return "/chat/completions", body

    def complete(self, request: GenerationRequest, params: SamplingParams) -> Generation:
        """Send one request with retries; raise :class:`BackendError` when it cannot be answered."""
        path, body = self._payload(request, params)
        url = self.base_url + path
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(_MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)))
            try:
                response = self._client.post(url, content=json.dumps(body))
            except httpx.TimeoutException:
                last_error = f"timed out after {self._client.timeout.read} s"
                continue
            except httpx.TransportError as error:  # refused, reset, DNS, ...
                last_error = f"{type(error).__name__}: {error}"
                continue
            if response.status_code in _RETRY_STATUS:
                last_error = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code != 200:
                raise BackendError(f"{url} answered HTTP {response.status_code}: {response.text[:500]}")
            return self._parse(response, request, params, url)
        raise BackendError(f"{url}: no answer after {self.max_retries + 1} attempts ({last_error})")

    def _parse(self, response: httpx.Response, request: GenerationRequest, params: SamplingParams, url: str) -> Generation:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["text"] if isinstance(request.prompt, str) else choice["message"]["content"]
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            finish = choice.get("finish_reason") or "stop"
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
            raise BackendError(f"{url} returned an unexpected body ({error!r}): {response.text[:300]}") from None
        text = text or ""
        cuts = [pos for pos in (text.find(s) for s in params.stop if s) if pos >= 0]
        if cuts:  # servers cut at stop strings already; some return them
            text = text[: min(cuts)]
        prompt_text = request.prompt if isinstance(request.prompt, str) else _render_chat(request.prompt)
        return Generation(
            text=text,
            prompt_text=prompt_text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason="length" if finish == "length" else "stop",
        )

    # ------------------------------------------------------------------ the Policy protocol

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        """Complete every request (``max_concurrent`` in flight); the i-th answers the i-th."""
        check_params(params)
        futures = [self._pool.submit(self.complete, request, params) for request in requests]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()  # after an error, do not keep retrying the rest in the background

    def stream(self, params: SamplingParams) -> HTTPStream:
        """Submit requests at any time; collect each as soon as the server answers it."""
        check_params(params)
        return HTTPStream(self, params)


class HTTPStream:
    """:class:`~leafe.policy.base.GenerationStream` over an :class:`OpenAIPolicy`."""

    def __init__(self, policy: OpenAIPolicy, params: SamplingParams) -> None:
        self.policy = policy
        self.params = params
        self._futures: dict[Future[Generation], Hashable] = {}

    @property
    def pending(self) -> int:
        return len(self._futures)

    def submit(self, key: Hashable, request: GenerationRequest) -> None:
        self._futures[self.policy._pool.submit(self.policy.complete, request, self.params)] = key

    def close(self) -> None:
        for future in self._futures:
            future.cancel()  # requests already on the wire finish in the background, unread
        self._futures.clear()

    def next_finished(self) -> list[tuple[Hashable, HTTPResult]]:
        if not self._futures:
            return []
        done, _ = wait(list(self._futures), return_when=FIRST_COMPLETED)
        succeeded = [future for future in done if future.exception() is None]
        if not succeeded:  # only failures: raise the first one's error
            failed = next(iter(done))
            self._futures.pop(failed)
            failed.result()
        # Successes first; a failure stays queued and is raised by the next call.
        return [(self._futures.pop(future), HTTPResult(future.result())) for future in succeeded]
