"""Choosing and building backends from the policy config; LoRA adapters served by merging."""

from __future__ import annotations

import pytest
import torch

from leafe.config import PolicyConfig
from leafe.policy import choose_backend, load_policy
from leafe.policy.base import GenerationRequest, SamplingParams
from leafe.policy.checkpoints import adapter_base, servable_model
from leafe.policy.native import NativePolicy
from leafe.policy.transformers_backend import TransformersPolicy


def test_auto_picks_native_for_the_embedded_model_on_cpu(embedded_model_dir):
    assert choose_backend(PolicyConfig()) == "native"
    assert choose_backend(PolicyConfig(device="cpu", model=str(embedded_model_dir))) == "native"
    assert choose_backend(PolicyConfig(base_url="http://127.0.0.1:9/v1")) == "openai"
    assert choose_backend(PolicyConfig(backend="transformers")) == "transformers"


def test_auto_falls_back_to_transformers_for_other_architectures(tiny_policy, tmp_path):
    import transformers

    config = transformers.GPT2Config(vocab_size=len(tiny_policy.tokenizer), n_embd=32, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    assert choose_backend(PolicyConfig(model=str(tmp_path))) == "transformers"


def test_openai_backend_requires_a_base_url():
    with pytest.raises(ValueError, match="policy.base_url"):
        load_policy(PolicyConfig(backend="openai"))


def test_a_lora_adapter_is_merged_once_and_served_by_the_native_engine(tiny_policy, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("LEAFE_CACHE", str(tmp_path / "cache"))
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_policy.model.save_pretrained(base_dir)
    tiny_policy.tokenizer.save_pretrained(base_dir)
    peft_model = get_peft_model(
        TransformersPolicy(str(base_dir), device="cpu").model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero (a no-op adapter); make it change the outputs
                parameter.normal_(std=0.5)
    peft_model.save_pretrained(adapter_dir)
    assert adapter_base(adapter_dir) == str(base_dir) and adapter_base(base_dir) is None

    merged = servable_model(str(adapter_dir))
    assert merged != str(adapter_dir) and servable_model(str(adapter_dir)) == merged  # cached
    requests = [GenerationRequest("Observation:\nYou are at 0.\nThought:", seed=0), GenerationRequest("x", seed=1)]
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    served = load_policy(PolicyConfig(backend="native", model=str(adapter_dir)))
    assert isinstance(served, NativePolicy)
    with_adapter = TransformersPolicy.from_model(peft_model.eval(), tiny_policy.tokenizer)
    base = TransformersPolicy.from_model(tiny_policy.model, tiny_policy.tokenizer)
    expected = [g.text for g in with_adapter.generate(requests, params)]
    assert [g.text for g in served.generate(requests, params)] == expected
    assert [g.text for g in base.generate(requests, params)] != expected


def test_policy_packed_linear_reaches_the_native_engine(tiny_policy, tmp_path):
    from leafe.policy.native_linear import PackedWeights

    tiny_policy.model.save_pretrained(tmp_path)
    tiny_policy.tokenizer.save_pretrained(tmp_path)
    default = load_policy(PolicyConfig(backend="native", model=str(tmp_path)))
    off = load_policy(PolicyConfig(backend="native", model=str(tmp_path), packed_linear=False))
    assert default.net.packed.enabled == PackedWeights().enabled  # on wherever this PyTorch has oneDNN's linear
    assert not off.net.packed.enabled
