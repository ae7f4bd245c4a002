"""Shared fixtures.

``embedded_model_dir`` converts the embedded SmolLM2-135M-Instruct GGUF on first use (~25 s, once
per machine: it is cached under ``$LEAFE_CACHE`` or ``~/.cache/leafe``).
``tiny_model_dir`` is the same kind of model saved as a Hugging Face folder (for commands and
trainers that load models from disk).
``tiny_policy`` is a randomly initialised 2-layer Llama (hidden 64) with the real SmolLM2
tokenizer, so tests exercise real tokenization, chat template and stop strings in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest


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
