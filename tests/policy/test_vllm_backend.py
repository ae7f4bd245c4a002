"""vLLM backend: runs only where vLLM and a CUDA device exist (never on the CPU dev machine)."""

import importlib.util

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed (pip install -e '.[gpu]' on a CUDA machine)", allow_module_level=True)

import torch  # noqa: E402

if not torch.cuda.is_available():
    pytest.skip("vLLM needs a CUDA device", allow_module_level=True)

from leafe.config import PolicyConfig  # noqa: E402
from leafe.policy import choose_backend, load_policy  # noqa: E402
from leafe.policy.base import GenerationRequest, SamplingParams  # noqa: E402
from leafe.policy.transformers_backend import TransformersPolicy  # noqa: E402


def test_greedy_text_matches_transformers_and_seeds_reproduce():
    assert choose_backend(PolicyConfig()) == "vllm"
    vllm_policy = load_policy(PolicyConfig(backend="vllm", dtype="float32", engine_args={"gpu_memory_utilization": 0.3}))
    reference = TransformersPolicy("embedded", device="cuda", dtype="float32")
    requests = [GenerationRequest(p, seed=i) for i, p in enumerate(["The capital of France is", "def add(a, b):"])]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16)
    assert [g.text for g in vllm_policy.generate(requests, greedy)] == [g.text for g in reference.generate(requests, greedy)]
    sampled = SamplingParams(temperature=1.0, max_new_tokens=16)
    assert [g.text for g in vllm_policy.generate(requests, sampled)] == [g.text for g in vllm_policy.generate(requests, sampled)]
