"""``leafe serve``: an OpenAI-compatible HTTP server in front of any leafe policy.

Serves ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models`` and
``GET /health`` (standard library ``ThreadingHTTPServer``, one thread per connection). Requests
from concurrent connections share the native engine's batch: each handler submits to its own
stream and the engine decodes all of them together. Honours ``max_tokens``, ``temperature``,
``top_p``, ``stop`` and a per-request ``seed`` (same seed, same sample), so an experiment run
against this server over HTTP reproduces the in-process one. Only ``n = 1`` is supported.

Use it to share one model between several processes (e.g. a reflector model for many explorers),
or to test the ``openai`` backend against a real server.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from leafe.policy.base import Generation, GenerationRequest, Policy, SamplingParams, open_stream

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A malformed request; answered with HTTP 400 naming the field."""


def parse_request(body: Any, chat: bool) -> tuple[GenerationRequest, SamplingParams]:
    """An OpenAI completions/chat body -> (request, sampling parameters). Raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    if chat:
        prompt = body.get("messages")
        if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) for m in prompt):
            raise RequestError("messages: a non-empty list of {role, content} objects is required")
        prompt = [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in prompt]
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("prompt: a non-empty string is required")
    try:
        if int(body.get("n", 1) or 1) != 1:
            raise RequestError("n: only n = 1 is supported")
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(str(s) for s in stop)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        params = SamplingParams(
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            max_new_tokens=int(16 if max_tokens is None else max_tokens),
            stop=stop,
        )
        seed = body.get("seed")
        seed = secrets.randbits(63) if seed is None else int(seed)
    except (TypeError, ValueError) as error:
        raise RequestError(f"bad sampling field: {error}") from None
    if params.max_new_tokens < 0 or params.temperature < 0 or not 0 < params.top_p <= 1:
        raise RequestError("max_tokens must be >= 0, temperature >= 0 and top_p in (0, 1]")
    return GenerationRequest(prompt, seed=seed), params


class _Handler(BaseHTTPRequestHandler):
    server: LeafeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.rstrip("/") in ("/health", "/v1/health"):
            self._send(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.rstrip("/")
        if path not in ("/v1/completions", "/v1/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        chat = path.endswith("chat/completions")
        try:
            length = int(self.headers.get("Content-Length", "0"))
            request, params = parse_request(json.loads(self.rfile.read(length) or b"null"), chat)
        except (RequestError, json.JSONDecodeError, ValueError) as error:
            self._error(400, str(error))
            return
        try:
            generation = self.server.complete(request, params)
        except ValueError as error:  # e.g. a prompt longer than the model's context
            self._error(400, str(error))
            return
        except Exception as error:  # noqa: BLE001 - answer instead of dropping the connection
            logger.exception("request failed")
            self._error(500, f"{type(error).__name__}: {error}")
            return
        choice: dict[str, Any] = {"index": 0, "finish_reason": generation.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": generation.text}
        else:
            choice["text"] = generation.text
        usage = {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        }
        self._send(
            200,
            {
                "id": f"leafe-{secrets.token_hex(8)}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.server.model_name,
                "choices": [choice],
                "usage": usage,
            },
        )


class LeafeServer(ThreadingHTTPServer):
    """The HTTP server; ``complete`` runs one request through the policy."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], policy: Policy, model_name: str) -> None:
        super().__init__(address, _Handler)
        self.policy = policy
        self.model_name = model_name

    def complete(self, request: GenerationRequest, params: SamplingParams) -> Generation:
        """Run one request. Backends are thread-safe: the native engine batches concurrent
        handlers' streams together; batch-only backends serialise calls behind their own lock."""
        stream = open_stream(self.policy, params)
        try:
            stream.submit(0, request)
            while True:
                for _, result in stream.next_finished():
                    return result.generation
        finally:
            stream.close()


def serve(policy: Policy, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``policy`` until interrupted. Prints the base URL once listening."""
    server = LeafeServer((host, port), policy, model_name)
    print(f"serving {model_name} ({policy.name}) at http://{host}:{server.server_address[1]}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
