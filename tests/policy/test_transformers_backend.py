"""TransformersPolicy: seeded sampling, batching, stop strings, chat prompts.

Fast tests use ``tiny_policy`` (random 2-layer Llama + the real SmolLM2 tokenizer); the tests
marked slow run the real embedded 135M model.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from transformers import GenerationConfig

from leafe.config import PolicyConfig
from leafe.policy import GenerationRequest, SamplingParams, load_policy
from leafe.policy.transformers_backend import SeededSampler, TransformersPolicy

CHAT = [{"role": "user", "content": "Push the box left."}]
# Chi-square critical value, 5 degrees of freedom, p = 0.001.
CHI2_DF5_P001 = 20.52


def chi_square(counts: list[int], probs: list[float]) -> float:
    total = sum(counts)
    return sum((c - total * p) ** 2 / (total * p) for c, p in zip(counts, probs))


def first_step_probs(policy: TransformersPolicy, prompt: str, temperature: float) -> torch.Tensor:
    """softmax(logits / T) of the first generated token, from one unpadded forward pass: (vocab,)."""
    ids = torch.tensor([policy.tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        logits = policy.model(ids).logits[0, -1].float()
    return torch.softmax(logits / temperature, dim=-1)


# ----------------------------------------------------------------------------- the sampler alone


def test_seeded_sampler_matches_softmax_on_fixed_logits():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n, temperature = 20_000, 0.7
    sampler = SeededSampler(range(n), temperature)
    picks = sampler(torch.zeros((n, 1), dtype=torch.long), logits.repeat(n, 1)).argmax(-1)
    counts = torch.bincount(picks, minlength=6).tolist()
    probs = torch.softmax(logits / temperature, -1).tolist()
    assert chi_square(counts, probs) < CHI2_DF5_P001, (counts, probs)


def test_seeded_sampler_top_p_keeps_the_smallest_nucleus():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    probs = torch.softmax(logits, -1)  # 0.57, 0.21, 0.13, 0.08, ...
    n = 10_000
    sampler = SeededSampler(range(n), 1.0, top_p=0.7)  # nucleus = first two tokens (0.78)
    picks = sampler(torch.zeros((n, 1), dtype=torch.long), logits.repeat(n, 1)).argmax(-1)
    counts = torch.bincount(picks, minlength=6).tolist()
    assert counts[2:] == [0, 0, 0, 0]
    kept = probs[:2] / probs[:2].sum()
    expected = kept[0].item() * n
    assert abs(counts[0] - expected) < 4 * (n * kept[0].item() * kept[1].item()) ** 0.5


def test_a_rows_draws_depend_only_on_its_seed():
    logits = torch.randn(3, 1000)
    sampler = SeededSampler([7], 1.0)
    alone = [sampler.draw(logits[1:2]).item() for _ in range(20)]
    batched = SeededSampler([3, 7, 11], 1.0)
    together = [batched.draw(logits)[1].item() for _ in range(20)]
    assert alone == together  # same seed, same logits, same t -> same token in any batch
    assert len(set(alone)) > 1  # a fresh uniform per token


def test_sampler_never_draws_a_zero_probability_token():
    from leafe.policy.sampling import inverse_cdf

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).repeat(5, 1)
    uniforms = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0 - 1e-16], dtype=torch.float64)
    assert inverse_cdf(probs, uniforms).tolist() == [1, 1, 3, 3, 3]
    processed = SeededSampler([0], 1.0)(torch.zeros((1, 1), dtype=torch.long), torch.tensor([[0.0, -1.0, float("-inf")]]))
    assert torch.isfinite(processed).sum() == 1 and processed[0, 2] == float("-inf")


# ----------------------------------------------------------------------------- the tiny policy


def test_greedy_equals_model_generate(tiny_policy):
    prompt = "Thought: I should move the box"
    ours = tiny_policy.generate_tokens([GenerationRequest(prompt, seed=123)], SamplingParams(temperature=0, max_new_tokens=12))
    ids = torch.tensor([tiny_policy.tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        reference = tiny_policy.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
            pad_token_id=tiny_policy.pad_token_id,
        )  # fmt: skip
    expected = reference[0, ids.shape[1] :].tolist()
    assert ours[0].completion_token_ids == expected
    assert ours[0].generation.text == tiny_policy.tokenizer.decode(expected, skip_special_tokens=True)


def test_seeded_sample_is_the_same_alone_and_in_a_batch(tiny_policy):
    params = SamplingParams(temperature=1.0, max_new_tokens=12)
    target = GenerationRequest("Observation: you are in a room with a box.", seed=42)
    alone = tiny_policy.generate_tokens([target], params)[0]
    others = [
        GenerationRequest("Hi", seed=1),
        GenerationRequest(CHAT, seed=2),
        GenerationRequest("A much longer prompt " * 12, seed=3),
        GenerationRequest(target.prompt, seed=43),  # same prompt, other seed
        GenerationRequest("x y z", seed=42),  # same seed, other prompt
    ]
    # max_batch_size 3: the target shares a chunk with prompts of other lengths (left padding).
    small_batches = TransformersPolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=3)
    for policy in (tiny_policy, small_batches):
        batch = others[:2] + [target] + others[2:]
        together = policy.generate_tokens(batch, params)
        assert together[2].completion_token_ids == alone.completion_token_ids
        assert together[2].generation == alone.generation
        assert [g.generation.prompt_text for g in together] == [policy.render_prompt(r.prompt) for r in batch]


def test_same_seed_repeats_and_different_seeds_differ(tiny_policy):
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    prompt = "Thought:"
    texts = [g.text for g in tiny_policy.generate([GenerationRequest(prompt, seed=s) for s in range(5)], params)]
    again = [g.text for g in tiny_policy.generate([GenerationRequest(prompt, seed=s) for s in range(5)], params)]
    assert texts == again
    assert len(set(texts)) > 1


def test_temperature_zero_ignores_the_seed(tiny_policy):
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    texts = {g.text for g in tiny_policy.generate([GenerationRequest("Thought:", seed=s) for s in range(4)], params)}
    assert len(texts) == 1


def test_first_token_distribution_matches_softmax(tiny_policy):
    prompt, temperature, n = "Action:", 0.4, 1200
    probs = first_step_probs(tiny_policy, prompt, temperature)
    top = probs.topk(5)
    big_batches = TransformersPolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=400)
    results = big_batches.generate_tokens(
        [GenerationRequest(prompt, seed=s) for s in range(n)], SamplingParams(temperature=temperature, max_new_tokens=1)
    )
    firsts = [r.completion_token_ids[0] for r in results]
    counts = [sum(t == token for t in firsts) for token in top.indices.tolist()]
    counts.append(n - sum(counts))
    expected = top.values.tolist() + [1.0 - top.values.sum().item()]
    assert top.values[0] > 0.1  # the test has power: the top token is common
    assert chi_square(counts, expected) < CHI2_DF5_P001, (counts, [round(p * n) for p in expected])


def test_tiny_top_p_always_picks_the_argmax(tiny_policy):
    prompt = "The box is"
    argmax = int(first_step_probs(tiny_policy, prompt, 1.0).argmax())
    results = tiny_policy.generate_tokens(
        [GenerationRequest(prompt, seed=s) for s in range(40)], SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=1)
    )
    assert {r.completion_token_ids[0] for r in results} == {argmax}


def test_model_generation_config_does_not_leak_into_sampling(tiny_policy):
    """A model whose generation_config asks for top_k=1, penalties and suppressed tokens must
    sample exactly like one with a clean config: the policy controls every generate() knob."""
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    requests = [GenerationRequest("The box is", seed=s) for s in range(6)]
    clean = tiny_policy.generate_tokens(requests, params)
    clean_greedy = tiny_policy.generate_tokens(requests[:1], SamplingParams(temperature=0, max_new_tokens=10))

    model = copy.deepcopy(tiny_policy.model)
    common = sorted({t for r in clean for t in r.completion_token_ids})[:20]
    model.generation_config = GenerationConfig(
        do_sample=True, top_k=1, top_p=0.1, temperature=0.05, repetition_penalty=50.0, no_repeat_ngram_size=1,
        suppress_tokens=common, begin_suppress_tokens=common, min_new_tokens=5,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    before = model.generation_config.to_dict()
    polluted = TransformersPolicy.from_model(model, tiny_policy.tokenizer)
    assert [r.completion_token_ids for r in polluted.generate_tokens(requests, params)] == [
        r.completion_token_ids for r in clean
    ]
    greedy = polluted.generate_tokens(requests[:1], SamplingParams(temperature=0, max_new_tokens=10))
    assert greedy[0].completion_token_ids == clean_greedy[0].completion_token_ids
    assert model.generation_config.to_dict() == before  # restored after each call


def test_stop_string_cuts_text_and_counts_tokens(tiny_policy):
    prompt = "Thought: the box"
    tokenizer = tiny_policy.tokenizer
    full = tiny_policy.generate_tokens([GenerationRequest(prompt, seed=0)], SamplingParams(temperature=0, max_new_tokens=16))[0]
    assert full.generation.finish_reason == "length"
    ids = full.completion_token_ids
    # A stop string completed by the 6th generated token: the decoded text of that token.
    stop = tokenizer.decode(ids[5:6], skip_special_tokens=True).strip() or tokenizer.decode(ids[5:7]).strip()
    assert stop
    expected_tokens = next(k for k in range(1, len(ids) + 1) if stop in tokenizer.decode(ids[:k], skip_special_tokens=True))
    cut = tiny_policy.generate_tokens(
        [GenerationRequest(prompt, seed=0)], SamplingParams(temperature=0, max_new_tokens=16, stop=("@@never@@", stop))
    )[0]
    assert cut.generation.finish_reason == "stop"
    assert cut.generation.text == full.generation.text[: full.generation.text.find(stop)]
    assert stop not in cut.generation.text
    assert cut.generation.completion_tokens == expected_tokens == len(cut.completion_token_ids)
    assert cut.completion_token_ids == ids[:expected_tokens]


def test_max_new_tokens_is_respected(tiny_policy):
    requests = [GenerationRequest("Thought:", seed=s) for s in range(3)] + [GenerationRequest(CHAT, seed=9)]
    for n in (1, 7):
        for g in tiny_policy.generate(requests, SamplingParams(temperature=1.0, max_new_tokens=n)):
            assert g.finish_reason == "length"
            assert g.completion_tokens == n
    empty = tiny_policy.generate(requests[:1], SamplingParams(max_new_tokens=0))[0]
    assert (empty.text, empty.completion_tokens, empty.finish_reason) == ("", 0, "length")
    assert tiny_policy.generate([], SamplingParams()) == []


def test_chat_messages_get_the_chat_template(tiny_policy):
    messages = [{"role": "system", "content": "You play Sokoban."}, {"role": "user", "content": "Where is the box?"}]
    g = tiny_policy.generate([GenerationRequest(messages, seed=0)], SamplingParams(max_new_tokens=2))[0]
    assert g.prompt_text.startswith("<|im_start|>system\nYou play Sokoban.<|im_end|>")
    assert "<|im_start|>user\nWhere is the box?<|im_end|>" in g.prompt_text
    assert g.prompt_text.endswith("<|im_start|>assistant\n")
    assert g.prompt_tokens == len(tiny_policy.tokenizer(g.prompt_text, add_special_tokens=False)["input_ids"])
    plain = tiny_policy.generate([GenerationRequest("Thought:", seed=0)], SamplingParams(max_new_tokens=2))[0]
    assert plain.prompt_text == "Thought:"


def test_invalid_arguments(tiny_policy):
    with pytest.raises(ValueError):
        tiny_policy.generate([GenerationRequest("", seed=0)], SamplingParams())
    with pytest.raises(ValueError):
        tiny_policy.generate([GenerationRequest("x", seed=0)], SamplingParams(top_p=0.0))
    with pytest.raises(ValueError):
        TransformersPolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=0)


def test_from_model_restores_train_mode(tiny_policy):
    model = copy.deepcopy(tiny_policy.model).train()
    policy = TransformersPolicy.from_model(model, tiny_policy.tokenizer)
    params = SamplingParams(temperature=1.0, max_new_tokens=5)
    request = [GenerationRequest("Thought:", seed=3)]
    assert policy.generate(request, params) == tiny_policy.generate(request, params)
    assert model.training


def test_importing_the_package_stays_light():
    code = "import sys, leafe.policy as p; print('torch' in sys.modules, p.DEFAULT_MODEL)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "smollm2-135m-instruct"]


# ----------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def embedded_policy(embedded_model_dir):
    return load_policy(PolicyConfig(backend="transformers", max_batch_size=4))


@pytest.mark.slow
def test_embedded_model_answers_a_chat_prompt_greedily(embedded_policy):
    assert isinstance(embedded_policy, TransformersPolicy)
    assert embedded_policy.name == "transformers"
    assert embedded_policy.model.dtype == torch.float32
    g = embedded_policy.generate(
        [GenerationRequest([{"role": "user", "content": "What is 2+2?"}], seed=0)],
        SamplingParams(temperature=0, max_new_tokens=24),
    )[0]
    assert g.text.strip()
    assert "<|im_end|>" not in g.text
    assert g.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_embedded_model_stops_at_newline_and_eos(embedded_policy):
    chat = [{"role": "user", "content": "Say hello."}]
    results = embedded_policy.generate(
        [GenerationRequest(chat, seed=s) for s in range(4)] + [GenerationRequest("def add(a, b):\n", seed=0)],
        SamplingParams(temperature=0.7, max_new_tokens=48, stop=("\n",)),
    )
    for g in results:
        assert "\n" not in g.text
        if g.finish_reason == "length":
            assert g.completion_tokens == 48
        else:
            assert g.completion_tokens <= 48
    # The short chat answers end with <|im_end|> or a newline well before 48 tokens.
    assert any(g.finish_reason == "stop" for g in results[:4])
