"""How episodes are played and scored: the policy and its backend, the ReAct loop, the workers
that play, and Pass@k evaluation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from leafe.config.base import Section


class PolicyConfig(Section):
    """Which model answers, through which inference backend, and how it samples."""

    backend: Literal["auto", "transformers", "native", "vllm", "openai"] = "auto"
    model: str = Field("smollm2-135m-instruct", min_length=1)
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_size: int = Field(64, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(48, ge=1, le=32768)
    prefix_cache_mb: int = Field(2048, ge=0, le=1 << 20)
    # Native engine: draft tokens per sequence and step, copied from the context and verified
    # exactly (prompt-lookup speculative decoding); 0 turns it off.
    speculative_tokens: int = Field(4, ge=0, le=64)
    # Native engine on the CPU: run passes of 16+ rows on oneDNN with the weights reordered once
    # (faster on the CPUs measured; one extra copy of the weights in memory); false: MKL only.
    packed_linear: bool = True
    base_url: str | None = Field(None, pattern=r"^https?://")
    api_key_env: str = "OPENAI_API_KEY"
    request_timeout_s: float = Field(120.0, gt=0.0, le=86400.0)
    max_retries: int = Field(4, ge=0, le=100)
    engine_args: dict[str, Any] = Field(default_factory=dict)


class RolloutConfig(Section):
    """The multi-turn ReAct loop shared by every command."""

    max_steps: int = Field(10, ge=1, le=10000)
    history_window: int = Field(2, ge=0, le=1000)
    prompt_format: Literal["completion", "chat"] = "completion"
    few_shot: bool = True
    max_concurrent_episodes: int = Field(64, ge=1, le=100000)


class WorkersConfig(Section):
    """Where ``leafe eval`` (sample), ``leafe explore`` and ``leafe run`` play episodes: in this
    process (``num: 1``) or on ``num`` Ray actors (``pip install -e ".[ray]"``), each with its own
    environments and model, streaming finished episodes and trees back (:mod:`leafe.workers`).
    """

    num: int = Field(1, ge=1, le=100000)
    # None: a new Ray on this machine; "auto" or "head-ip:6379": join a running cluster from one
    # of its nodes (a Ray Client address, ray://, cannot stream the records back).
    ray_address: str | None = None
    cpus: float = Field(1.0, gt=0.0, le=4096.0)  # per worker; its torch threads are max(1, floor(cpus))
    gpus: float = Field(0.0, ge=0.0, le=64.0)  # per worker, e.g. 1 with policy.backend: vllm

    @field_validator("ray_address")
    @classmethod
    def _not_ray_client(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("ray://"):
            raise ValueError("a Ray Client address (ray://) cannot stream records back; run leafe on a node "
                             "of the cluster with ray_address: auto (or submit it with `ray job submit`)")
        return value


class EvalConfig(Section):
    """Pass@k evaluation: n independent samples per task.

    ``method: sample`` plays one episode per sample. ``method: reflexion`` (inference-time
    reflection) makes each sample a chain of attempts: after a failed attempt the ``explore``
    section's reflector writes a lesson and the next attempt starts over with the lessons in its
    prompt, until one succeeds or ``budget_episodes * rollout.max_steps`` turns are spent (an
    attempt that ends early leaves its turns to the next ones). Reflexion is ``leafe eval``'s
    alone: ``leafe run`` evaluates by sampling and refuses it.
    """

    method: Literal["sample", "reflexion"] = "sample"
    budget_episodes: int = Field(3, ge=1, le=1000)
    split: Literal["train", "test"] = "test"
    num_tasks: int = Field(8, ge=1, le=100000)
    samples_per_task: int = Field(8, ge=1, le=100000)
    ks: tuple[int, ...] = (1, 2, 4, 8)
    num_bootstrap: int = Field(1000, ge=10, le=1000000)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)

    @field_validator("ks")
    @classmethod
    def _ks_positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(k < 1 for k in value):
            raise ValueError("must be a non-empty list of integers >= 1")
        return tuple(sorted(set(value)))

