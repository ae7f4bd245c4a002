"""Inference backends ("policies") that turn prompts into completions.

``load_policy(cfg.policy)`` builds the backend a :class:`~leafe.config.PolicyConfig` names:

- ``native``: leafe's CPU engine (continuous batching + prefix cache) for Llama-family models;
- ``transformers``: ``AutoModelForCausalLM.generate``, any causal LM, any device;
- ``vllm``: vLLM on GPUs (optional ``[gpu]`` extra), LoRA adapters served unmerged;
- ``openai``: any OpenAI-compatible HTTP server (vLLM serve, SGLang, llama.cpp, Ollama, hosted);
- ``auto``: ``openai`` if ``base_url`` is set, else vLLM on CUDA when installed, else ``native``
  when it supports the model, else ``transformers``.

Importing this package stays light: torch and transformers are imported only when a backend is
built or ``TransformersPolicy`` is first accessed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leafe.policy.base import ChatMessages, Generation, GenerationRequest, Policy, Prompt, SamplingParams
from leafe.policy.embedded import DEFAULT_MODEL, resolve_model

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from leafe.config import PolicyConfig
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
    "choose_backend",
    "load_policy",
    "load_policy_for",
    "resolve_model",
]


def _transformers(cfg: PolicyConfig, model: str) -> Policy:
    from leafe.policy.checkpoints import servable_model
    from leafe.policy.transformers_backend import TransformersPolicy

    return TransformersPolicy(servable_model(model), cfg.device, cfg.dtype, cfg.max_batch_size)


def _native(cfg: PolicyConfig, model: str) -> Policy:
    from leafe.policy.checkpoints import servable_model
    from leafe.policy.native import NativePolicy

    return NativePolicy(
        servable_model(model),
        cfg.device,
        cfg.dtype,
        cfg.max_batch_size,
        prefix_cache_mb=cfg.prefix_cache_mb,
        speculative_tokens=cfg.speculative_tokens,
        packed_linear=cfg.packed_linear,
    )


def _vllm(cfg: PolicyConfig, model: str) -> Policy:
    from leafe.policy.vllm_backend import VLLMPolicy

    return VLLMPolicy(model, dtype=cfg.dtype, engine_args=cfg.engine_args)


def _openai(cfg: PolicyConfig, model: str) -> Policy:
    from leafe.config import ConfigError
    from leafe.policy.openai_backend import OpenAIPolicy

    if not cfg.base_url:
        raise ConfigError("policy.base_url: required for backend openai (e.g. http://localhost:8000/v1)")
    return OpenAIPolicy(
        cfg.base_url,
        model,
        api_key_env=cfg.api_key_env,
        max_concurrent=cfg.max_batch_size,
        timeout_s=cfg.request_timeout_s,
        max_retries=cfg.max_retries,
    )


# name -> factory(policy config, model)
BACKENDS: dict[str, Callable[[Any, str], Policy]] = {
    "native": _native,
    "transformers": _transformers,
    "vllm": _vllm,
    "openai": _openai,
}


def _model_type(model: str, _depth: int = 0) -> str | None:
    """``model_type`` from the checkpoint's config.json (an adapter's base model for LoRA), or None
    (also for a chain of adapters too long to be anything but a loop)."""
    try:
        path = Path(resolve_model(model))
    except (OSError, ValueError):
        return None
    from leafe.policy.checkpoints import MAX_ADAPTER_CHAIN, adapter_base

    base = adapter_base(path)
    if base is not None:
        return _model_type(base, _depth + 1) if _depth < MAX_ADAPTER_CHAIN else None
    config = path / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type")
    try:  # a hub id (only works where the hub or its local cache is reachable)
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(path)).model_type
    except (OSError, ValueError):
        return None


def served_over_http(cfg: PolicyConfig) -> bool:
    """Whether ``cfg`` means the ``openai`` backend (named, or ``auto`` with a ``base_url``): the
    model is then a server's name, not anything loaded here."""
    return cfg.backend == "openai" or (cfg.backend == "auto" and bool(cfg.base_url))


def choose_backend(cfg: PolicyConfig, model: str | None = None) -> str:
    """The backend ``cfg.backend`` means for ``model`` (resolves ``auto``, see the module docstring)."""
    if served_over_http(cfg):
        return "openai"
    if cfg.backend != "auto":
        return cfg.backend
    wants_cuda = cfg.device.startswith("cuda") or cfg.device == "auto"
    if wants_cuda and importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm"
    if cfg.device in ("auto", "cpu"):
        from leafe.policy.native import SUPPORTED_MODEL_TYPES

        if _model_type(model or cfg.model) in SUPPORTED_MODEL_TYPES:
            import torch

            if cfg.device == "cpu" or not torch.cuda.is_available():
                return "native"
    return "transformers"


def load_policy(cfg: PolicyConfig | None = None, model: str | None = None) -> Policy:
    """Build the backend ``cfg`` names, serving ``model`` (default ``cfg.model``).

    Args:
        cfg: the ``policy`` section of an experiment config (default: all defaults).
        model: ``"embedded"``, a local folder (full checkpoint or LoRA adapter) or a hub id.

    Raises:
        ValueError: a backend that cannot serve this config (the message names the field).
    """
    from leafe.config import PolicyConfig

    cfg = cfg or PolicyConfig()
    model = model or cfg.model
    backend = choose_backend(cfg, model)
    if cfg.engine_args and backend != "vllm":  # (a named backend other than vllm is refused by the config)
        logger.warning("policy.engine_args is ignored: backend auto chose %s here, and only vllm reads it", backend)
    return BACKENDS[backend](cfg, model)


def check_before_loading(cfg: PolicyConfig, model: str, field: str, device: bool = True) -> None:
    """Check, without loading anything, what can be known of loading ``model`` with ``cfg``: the
    model reference (:func:`~leafe.policy.checkpoints.check_model_reference`, a failure names
    ``field``) and, with ``device`` (the model loads in this process), ``policy.device``.
    Nothing is checked for a model served over HTTP (the server's name for it).

    Raises:
        ConfigError: naming the field at fault.
    """
    from leafe.policy.checkpoints import check_model_reference
    from leafe.policy.transformers_backend import resolve_device

    if served_over_http(cfg):
        return
    check_model_reference(model, field, hf_layout=cfg.backend != "vllm")
    if device:
        resolve_device(cfg.device)


def load_policy_for(field: str, cfg: PolicyConfig, model: str, who: str = "", hint: str = "") -> Policy:
    """:func:`load_policy`, with a failure to load ``model`` raised as a ConfigError naming
    ``field`` (``who`` says who could not load it, ``hint`` what to do)."""
    from leafe.config import ConfigError
    from leafe.policy.errors import first_line

    check_before_loading(cfg, model, field)
    try:
        return load_policy(cfg, model)
    except ConfigError:  # it names its own field (policy.device, policy.base_url, ...)
        raise
    except (OSError, ValueError, RuntimeError, AssertionError) as error:
        raise ConfigError(f"{field}: {who}cannot load {model!r} with backend {cfg.backend!r}: {first_line(error)}{hint}") from None


def __getattr__(name: str) -> Any:
    if name == "TransformersPolicy":
        from leafe.policy.transformers_backend import TransformersPolicy

        return TransformersPolicy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
