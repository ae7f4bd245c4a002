"""Shared fixtures.

``embedded_model_dir`` converts the embedded SmolLM2-135M-Instruct GGUF on first use (~25 s, once
per machine: it is cached under ``$LEAFE_CACHE`` or ``~/.cache/leafe``).
``tiny_model_dir`` is the same kind of model saved as a Hugging Face folder (for commands and
trainers that load models from disk).
``tiny_policy`` is a randomly initialised 2-layer Llama (hidden 64) with the real SmolLM2
tokenizer, so tests exercise real tokenization, chat template and stop strings in milliseconds.

Under pytest-xdist (``make test`` runs ``-n 2``) each worker, and every process a test starts,
gets an equal share of the CPUs for its BLAS and OpenMP threads (unless ``OMP_NUM_THREADS`` is
set), and tests marked ``minutes(N)`` are handed out first, so they do not start last.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = str(max(1, _cpus // _WORKERS))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads  # inherited by subprocesses
    import torch

    torch.set_num_threads(int(_threads))  # in case torch was imported before this file


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``minutes(N)`` first, then the rest in their own order.

    ``make test`` runs ``-n 2 --maxschedchunk=1``, so xdist hands out the items two at a time: the
    first two to one worker, the next two to the other, then one at a time as workers free up.
    The long tests are ordered longest, shortest, second longest, second shortest, ... so each
    first pair mixes a long and a short one.
    """
    timed = sorted((item for item in items if item.get_closest_marker("minutes")),
                   key=lambda item: -item.get_closest_marker("minutes").args[0])
    paired = [timed[i // 2] if i % 2 == 0 else timed[-1 - i // 2] for i in range(len(timed))]
    items[:] = paired + [item for item in items if not item.get_closest_marker("minutes")]


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from leafe.policy.embedded import resolve_model

    return Path(resolve_model("embedded"))


@pytest.fixture(scope="session")
def tiny_policy(embedded_model_dir: Path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from leafe.policy.transformers_backend import TransformersPolicy

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Random init gives near-uniform next-token distributions over 49k tokens; a sharper head
        # gives distributions with a few likely tokens, which sampling tests can measure.
        model.lm_head.weight.mul_(10.0)
    return TransformersPolicy.from_model(model.eval(), tokenizer, max_batch_size=16)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_model_dir) -> Path:
    """A randomly initialised 2-layer Llama saved as a Hugging Face directory (real tokenizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
