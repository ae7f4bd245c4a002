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


def _grpo_trainer(tmp_path, finetune):
    from leafe.config import config_from_dict
    from leafe.envs import build_env
    from leafe.prompting import Prompter
    from leafe.runs import RunDir
    from leafe.trainers.grpo import GRPOTrainer

    cfg = config_from_dict({
        "policy": {"backend": "vllm", "dtype": "float32", "device": "cuda", "max_new_tokens": 16,
                   "engine_args": {"gpu_memory_utilization": 0.3, "enforce_eager": True}},
        "rollout": {"history_window": 8, "max_steps": 2},
        "grpo": {"finetune": finetune, "learning_rate": 5e-2, "num_tasks": 2},
    })
    make_env, tasks = build_env(cfg.env)
    return GRPOTrainer(cfg, RunDir(path=tmp_path, resumed=False), make_env, tasks, Prompter(history_window=8))


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_grpo_syncs_the_updated_weights_into_vllm_without_a_restart(tmp_path, finetune):
    from tests.trainers.test_grpo import REPLIES, _trajectory

    trainer = _grpo_trainer(tmp_path, finetune)
    engine = trainer.policy
    requests = [GenerationRequest(f"Observation:\nRoom {i}\nThought:", seed=i) for i in range(3)]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    before = [g.text for g in engine.generate(requests, greedy)]
    trainer._update([_trajectory(REPLIES, 0, success=True), _trajectory(REPLIES[:1], 1)], torch.tensor([1.0, -1.0]))
    trainer.policy.weights_changed()
    assert trainer.policy is engine  # the same engine, not a restarted one
    reference = TransformersPolicy.from_model(
        trainer.model.merge_and_unload() if finetune == "lora" else trainer.model, trainer.tokenizer
    )
    served = [g.text for g in engine.generate(requests, greedy)]
    assert served == [g.text for g in reference.generate(requests, greedy)] and served != before
