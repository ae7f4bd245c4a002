"""Inference backends ("policies") that turn prompts into completions.

``load_policy(backend, model, **kwargs)`` builds one by name. Backends: ``"transformers"``
(``"auto"`` maps to it). Importing this package stays light: torch and transformers are imported
only when a backend is built or ``TransformersPolicy`` is first accessed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leafe.policy.base import ChatMessages, Generation, GenerationRequest, Policy, Prompt, SamplingParams
from leafe.policy.embedded import DEFAULT_MODEL, resolve_model

if TYPE_CHECKING:
    from leafe.policy.transformers_backend import TransformersPolicy

__all__ = [
    "BACKENDS",
    "DEFAULT_MODEL",
    "ChatMessages",
    "Generation",
    "GenerationRequest",
    "Policy",
    "Prompt",
    "SamplingParams",
    "TransformersPolicy",
    "load_policy",
    "resolve_model",
]


def _transformers(model: str, **kwargs: Any) -> Policy:
    from leafe.policy.transformers_backend import TransformersPolicy

    return TransformersPolicy(model, **kwargs)


# name -> factory(model, **kwargs). Future backends (vLLM, an HTTP/OpenAI-compatible server, a
# fast CPU engine) register here.
BACKENDS: dict[str, Callable[..., Policy]] = {
    "transformers": _transformers,
}

# Aliases resolved before lookup; "auto" picks the best backend available (only one for now).
_ALIASES = {"auto": "transformers"}


def load_policy(backend: str, model: str = DEFAULT_MODEL, **kwargs: Any) -> Policy:
    """Build the policy ``backend`` serving ``model``.

    Args:
        backend: ``"transformers"`` or ``"auto"`` (-> transformers).
        model: ``"embedded"``, a local folder or a hub id (see :func:`resolve_model`).
        **kwargs: passed to the backend's constructor (e.g. ``device``, ``dtype``,
            ``max_batch_size`` for transformers).

    Raises:
        ValueError: unknown backend (the message lists the known ones).
    """
    key = _ALIASES.get(backend.strip().lower(), backend.strip().lower())
    factory = BACKENDS.get(key)
    if factory is None:
        known = sorted(set(BACKENDS) | set(_ALIASES))
        raise ValueError(f"unknown policy backend {backend!r}; known backends: {', '.join(known)}")
    return factory(model, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "TransformersPolicy":
        from leafe.policy.transformers_backend import TransformersPolicy

        return TransformersPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
