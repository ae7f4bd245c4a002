"""The native engine against transformers on the same weights: same tokens, any batch, any cache state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leafe.policy.base import GenerationRequest, SamplingParams
from leafe.policy.native import PARK_STEPS, NativePolicy, UnsupportedModel, _Sequence
from leafe.policy.prefix_cache import common_prefix_length
from leafe.policy.transformers_backend import TransformersPolicy

PROMPTS = [
    "Observation:\nYou are at 0.\nThought:",
    "Push every box onto a goal.\n\nObservation:\n#####\n#P_X#\n#####\nThought:",
    [{"role": "user", "content": "Say hi."}],
    "Observation:\nYou are at 3.\nThought: I should go right.\nAction: right\n\nObservation:\nYou are at 4.\nThought:",
    "x",
]


def _requests(prompts=PROMPTS, seed0=0):
    return [GenerationRequest(prompt, seed=seed0 + i) for i, prompt in enumerate(prompts)]


def _ids(results):
    return [r.completion_token_ids for r in results]


@pytest.fixture(scope="module")
def tiny_native(tiny_policy):
    return NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=8)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_same_tokens_as_transformers(tiny_policy, tiny_native, temperature):
    params = SamplingParams(temperature=temperature, max_new_tokens=12)
    ours, theirs = tiny_native.generate_tokens(_requests(), params), tiny_policy.generate_tokens(_requests(), params)
    assert _ids(ours) == _ids(theirs)
    assert [r.generation for r in ours] == [r.generation for r in theirs]


def test_packed_linear_gives_the_same_tokens_and_its_copies_are_released(tiny_policy):
    """oneDNN's packed products (passes of 16+ rows) against MKL's: the same greedy tokens; the
    copies of the weights go with the engine's other memory in release_memory."""
    on = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=8)
    off = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=8, packed_linear=False)
    if not on.net.packed.enabled:
        pytest.skip("this PyTorch build has no oneDNN linear")
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    assert _ids(on.generate_tokens(_requests(), params)) == _ids(off.generate_tokens(_requests(), params))
    assert on.net.packed._entries and not off.net.packed._entries
    on.release_memory()
    assert not on.net.packed._entries
    on.generate_tokens(_requests(), params)
    saved = [parameter.detach().clone() for parameter in on.model.parameters()]
    with torch.no_grad():  # an update through .data: no version counter moves, weights_changed says so
        for parameter in on.model.parameters():
            parameter.data.mul_(1.5)
    on.weights_changed()
    off.weights_changed()
    try:
        assert _ids(on.generate_tokens(_requests(), params)) == _ids(off.generate_tokens(_requests(), params))
    finally:
        with torch.no_grad():
            for parameter, value in zip(on.model.parameters(), saved):
                parameter.data.copy_(value)


def test_prefix_cache_reuses_shared_and_repeated_prompts(tiny_policy):
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=8)
    long_prompt = "Instructions: " + "walk right until the goal. " * 20 + "\nObservation:\nYou are at 0.\nThought:"
    requests = [GenerationRequest(long_prompt, seed=i) for i in range(6)]
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    first = engine.generate_tokens(requests, params)
    prompt_len = first[0].generation.prompt_tokens
    # Six identical prompts: the prompt is computed once, then each runs only its last token.
    assert engine.stats.computed_prompt_tokens <= prompt_len + 6
    assert engine.stats.cached_prompt_tokens >= 6 * (prompt_len - 1) - prompt_len
    before = engine.stats.computed_prompt_tokens
    again = engine.generate_tokens(requests, params)
    assert engine.stats.computed_prompt_tokens - before == 6  # everything but the last token was cached
    assert _ids(again) == _ids(first)
    uncached = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=8, prefix_cache_mb=0)
    assert _ids(uncached.generate_tokens(requests, params)) == _ids(first)
    assert uncached.stats.cached_prompt_tokens == 0
    assert uncached.stats.computed_prompt_tokens == 6 * prompt_len


def test_continuous_batching_with_fewer_slots_than_requests(tiny_policy, tiny_native):
    params = SamplingParams(temperature=0.9, max_new_tokens=10, stop=("\n",))
    narrow = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=2, max_prefill_tokens=7)
    requests = _requests(PROMPTS * 3)
    assert _ids(narrow.generate_tokens(requests, params)) == _ids(tiny_native.generate_tokens(requests, params))
    assert narrow.slots.count == 2


def test_a_request_does_not_depend_on_its_batch(tiny_native):
    params = SamplingParams(temperature=1.0, max_new_tokens=10)
    target = GenerationRequest("Observation:\nYou are at 1.\nThought:", seed=42)
    alone = tiny_native.generate_tokens([target], params)[0]
    crowd = tiny_native.generate_tokens(_requests() + [target] + _requests(seed0=100), params)
    assert crowd[len(PROMPTS)].completion_token_ids == alone.completion_token_ids


HEADER = "Push every box onto a goal. Walls are #, floor is _, you are P. " * 6 + "\n\n"
SHARED = [HEADER + f"Observation:\nYou are at {i}.\nThought:" for i in range(5)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cascade_attention_over_a_shared_prefix_changes_nothing(tiny_policy, temperature):
    params = SamplingParams(temperature=temperature, max_new_tokens=12)
    engines = []
    for cascade in (True, False):
        engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=8)
        engine.cascade = cascade
        engines.append(engine)
    with_cascade, without = (engine.generate_tokens(_requests(SHARED), params) for engine in engines)
    assert _ids(with_cascade) == _ids(without) == _ids(tiny_policy.generate_tokens(_requests(SHARED), params))
    prompt = with_cascade[0].prompt_token_ids
    seqs = [type("S", (), {"prompt_array": torch.tensor(r.prompt_token_ids).numpy(), "length": len(prompt)})() for r in with_cascade]
    assert engines[0]._shared_prefix(seqs) >= 64  # the cascade path really ran


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cascade_on_the_flash_kernel_matches_the_float32_matmul_path(tiny_policy, dtype):
    from leafe.policy import native_forward

    if native_forward._CPU_FLASH is None:
        pytest.skip("this PyTorch has no CPU flash-attention kernel")
    net = native_forward.LlamaFamilyForward(tiny_policy.model)
    gen = torch.Generator().manual_seed(0)
    slots, capacity, shared = 6, 200, 70
    keys = torch.randn(slots, net.kv_heads, capacity, net.head_dim, generator=gen)
    values = torch.randn(slots, net.kv_heads, capacity, net.head_dim, generator=gen)
    keys[1:, :, :shared], values[1:, :, :shared] = keys[0, :, :shared], values[0, :, :shared]
    positions = torch.tensor([150, 71, 199, 120, 90])  # each row attends to 0..its position
    q = torch.randn(len(positions), net.num_heads, net.head_dim, generator=gen)
    net.flash_cascade = False
    expected = net._cascade_attention(q, keys, values, positions, shared)  # float32 batched matmuls
    net.flash_cascade = True
    got = net._cascade_attention(q.to(dtype), keys.to(dtype), values.to(dtype), positions, shared)
    assert got.dtype == dtype and got.shape == expected.shape == (len(positions), net.num_heads, net.head_dim)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)


def test_stream_accepts_longer_prompts_mid_flight(tiny_policy):
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    stream = engine.stream(params)
    stream.submit("short", GenerationRequest("x", seed=0))
    stream.submit("short2", GenerationRequest("y", seed=1))
    first = dict(stream.next_finished())
    capacity = engine.slots.capacity
    long_prompt = "word " * (capacity + 10)
    stream.submit("long", GenerationRequest(long_prompt, seed=2))
    results = dict(first)
    while stream.pending:
        results.update(stream.next_finished())
    assert engine.slots.capacity > capacity
    expected = tiny_policy.generate_tokens(
        [GenerationRequest("x", seed=0), GenerationRequest("y", seed=1), GenerationRequest(long_prompt, seed=2)], params
    )
    assert [results[k].completion_token_ids for k in ("short", "short2", "long")] == _ids(expected)
    assert stream.next_finished() == []


def test_stop_strings_eos_and_zero_tokens(tiny_policy, tiny_native):
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    full = tiny_native.generate_tokens(_requests(PROMPTS[:1]), params)[0]
    stop = full.generation.text[3:6]
    assert stop
    cut = tiny_native.generate_tokens(_requests(PROMPTS[:1]), SamplingParams(temperature=0.0, max_new_tokens=16, stop=(stop,)))[0]
    assert cut.generation.finish_reason == "stop"
    assert cut.generation.text == full.generation.text[: full.generation.text.find(stop)]
    assert cut.completion_token_ids == full.completion_token_ids[: len(cut.completion_token_ids)]
    empty = tiny_native.generate_tokens(_requests(), SamplingParams(max_new_tokens=0))
    assert all(r.completion_token_ids == [] and r.generation.text == "" for r in empty)
    with pytest.raises(ValueError, match="top_p"):
        tiny_native.generate(_requests(), SamplingParams(top_p=0.0))


def _tiny(config_cls, model_cls, tokenizer, **extra):
    config = config_cls(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra,
    )
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return model_cls(config).eval()


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_other_llama_family_architectures(tiny_policy, family):
    import transformers

    if family == "qwen2":  # biases on q/k/v
        model = _tiny(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, tiny_policy.tokenizer)
    else:  # per-head q/k RMSNorm, explicit head_dim
        model = _tiny(transformers.Qwen3Config, transformers.Qwen3ForCausalLM, tiny_policy.tokenizer, head_dim=32)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    native = NativePolicy.from_model(model, tiny_policy.tokenizer)
    reference = TransformersPolicy.from_model(model, tiny_policy.tokenizer)
    assert _ids(native.generate_tokens(_requests(), params)) == _ids(reference.generate_tokens(_requests(), params))


def test_unsupported_architecture_is_refused(tiny_policy):
    import transformers

    config = transformers.GPT2Config(vocab_size=len(tiny_policy.tokenizer), n_embd=32, n_layer=1, n_head=2)
    with pytest.raises(UnsupportedModel, match="policy.backend: transformers"):
        NativePolicy.from_model(transformers.GPT2LMHeadModel(config), tiny_policy.tokenizer)


@pytest.mark.slow
def test_embedded_model_greedy_text_matches_transformers(embedded_model_dir):
    from leafe.config import PolicyConfig
    from leafe.policy import load_policy

    native = load_policy(PolicyConfig(backend="native"))
    reference = TransformersPolicy.from_model(native.model, native.tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=24, stop=("\n\n",))
    requests = _requests(PROMPTS + SHARED)  # SHARED exercises the cascade attention path
    ours, theirs = native.generate(requests, params), reference.generate(requests, params)
    assert [g.text for g in ours] == [g.text for g in theirs]
    assert any(len(g.text) > 10 for g in ours)


def test_a_failed_call_leaves_nothing_behind_in_the_engine(tiny_policy):
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=5)
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate(_requests(PROMPTS[:2] + [""]), params)
    assert not engine._queue and not engine._active and not engine._ready
    stream = engine.stream(params)
    stream.submit("a", GenerationRequest("x", seed=0))
    engine._step()  # "a" is now mid-generation
    stream.close()
    assert not engine._queue and not engine._active and not engine._ready
    assert [g.text for g in engine.generate(_requests(PROMPTS[:2]), params)] == [
        g.text for g in tiny_policy.generate(_requests(PROMPTS[:2]), params)
    ]


def test_requests_too_large_for_the_model_or_the_machine_are_refused_before_allocating(tiny_policy):
    from leafe.policy.errors import RequestTooLarge

    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4)
    with pytest.raises(RequestTooLarge, match="policy.max_new_tokens"):  # tiny model: 2048 positions
        engine.generate(_requests(), SamplingParams(max_new_tokens=5000))
    greedy = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=300_000)
    with pytest.raises(RequestTooLarge, match="policy.max_batch_size"):  # ~150 GB of keys/values
        greedy.generate(_requests(), SamplingParams(max_new_tokens=5))
    assert not greedy.slots.keys


def _last_hidden(net, tokens):
    """One prompt-only pass of ``tokens`` into a fresh slot: the last position's hidden state."""
    shape = (1, net.kv_heads, 64, net.head_dim)
    keys = [torch.zeros(shape) for _ in net.layers]
    values = [torch.zeros(shape) for _ in net.layers]
    net.rope_table(64)
    empty = torch.empty(0, dtype=torch.long)
    with torch.inference_mode():
        return net.forward(keys, values, empty, empty, [(0, 0, tokens)])


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_fused_projections_give_bitwise_the_same_pass(tiny_policy, family):
    import copy

    import transformers

    from leafe.policy.native_forward import LlamaFamilyForward

    if family == "llama":
        model = copy.deepcopy(tiny_policy.model)
    elif family == "qwen2":  # biases on q/k/v
        model = _tiny(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, tiny_policy.tokenizer)
    else:  # per-head q/k RMSNorm on the fused projection's (strided) slices
        model = _tiny(transformers.Qwen3Config, transformers.Qwen3ForCausalLM, tiny_policy.tokenizer, head_dim=32)
    tokens = tiny_policy.tokenizer(PROMPTS[1])["input_ids"]
    plain = _last_hidden(LlamaFamilyForward(model), tokens)
    q_proj = model.model.layers[1].self_attn.q_proj
    weight, before = q_proj.weight, q_proj.weight.detach().clone()
    net = LlamaFamilyForward(model)
    assert net.fuse_projections() and net._qkv
    assert q_proj.weight is weight and torch.equal(weight, before)  # same Parameter, same values
    fused_qkv = net._qkv[1][0]
    assert weight.data_ptr() == fused_qkv.data_ptr()  # ... now a view of the fused tensor
    assert torch.equal(_last_hidden(net, tokens), plain)
    with torch.no_grad():  # an in-place update of the module's weight reaches the fused pass
        weight.mul_(0.5)
    assert not torch.equal(_last_hidden(net, tokens), plain)


def _peft_tiny(tiny_policy, **lora):
    """The tiny model with LoRA adapters whose B is not zero (so they change the outputs)."""
    import copy

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(tiny_policy.model), LoraConfig(r=2, init_lora_weights=False, **lora))
    return model.eval()


@pytest.mark.parametrize("fuse", [False, True])
def test_lora_wrapped_layers_give_peft_s_logits(tiny_policy, fuse):
    """The engine's pass over LoRA-wrapped projections (base products through _linear, fused or
    not, adapters added as peft does) gives the peft model's own logits, and follows the adapters
    as they change, are disabled, or run dropout in training mode."""
    from leafe.policy.native_forward import LlamaFamilyForward

    model = _peft_tiny(tiny_policy, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    net = LlamaFamilyForward(model.base_model.model)
    if fuse:  # the wrapped groups are fused: their base weights become views of one tensor
        assert net.fuse_projections() and net._qkv_wrapped[0] is not None
        assert model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.data_ptr() == net._qkv[0][0].data_ptr()
    tokens = tiny_policy.tokenizer(PROMPTS[1])["input_ids"]

    def engine_logits():
        return net.logits(_last_hidden(net, tokens))[-1]

    def peft_logits():
        with torch.inference_mode():
            return model(torch.tensor([tokens])).logits[0, -1]

    expected = peft_logits()
    torch.testing.assert_close(engine_logits(), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # an update of the adapters reaches the next pass
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(2.0)
    torch.testing.assert_close(engine_logits(), peft_logits(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(peft_logits(), expected, atol=1e-3)
    with model.disable_adapter():
        torch.testing.assert_close(engine_logits(), peft_logits(), rtol=1e-5, atol=1e-5)


def test_lora_dropout_in_training_mode_runs_peft_s_own_forward(tiny_policy):
    from leafe.policy.native_forward import LlamaFamilyForward

    model = _peft_tiny(tiny_policy, target_modules=["q_proj", "up_proj"], lora_dropout=0.5)
    net = LlamaFamilyForward(model.base_model.model)
    assert net.fuse_projections()
    tokens = tiny_policy.tokenizer(PROMPTS[1])["input_ids"]
    model.train()  # dropout on: every pass differs, as peft's own forward does
    first, second = (net.logits(_last_hidden(net, tokens))[-1] for _ in range(2))
    assert not torch.equal(first, second)
    model.eval()
    with torch.inference_mode():
        expected = model(torch.tensor([tokens])).logits[0, -1]
    torch.testing.assert_close(net.logits(_last_hidden(net, tokens))[-1], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_fused_rms_norm_is_bitwise_the_models_own(family):
    import importlib

    from leafe.policy.native_forward import _rms_norm

    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    norm = getattr(module, {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family] + "RMSNorm")(64, eps=1e-6)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=gen))
    x = torch.randn(7, 3, 64, generator=gen) * 4
    assert torch.equal(_rms_norm(norm, x), norm(x))
    assert torch.equal(_rms_norm(norm, x.bfloat16()), norm(x.bfloat16()))  # other dtypes: the module itself


def _spy(monkeypatch, obj, name, calls):
    """Record every call of ``obj.name`` (its arguments) in ``calls[name]`` and pass it through."""
    original = getattr(obj, name)
    calls[name] = []

    def wrapper(*args, **kwargs):
        calls[name].append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)


def test_a_next_turn_continues_in_its_parked_slot_with_nothing_copied(tiny_policy, monkeypatch):
    """Three episodes of three turns, each next prompt submitted as soon as the last reply is in
    (as the rollout loop does): every next prompt extends the last prompt and completion, so it
    claims the slot its last turn left parked. No keys/values are loaded from the cache or copied
    out for them, and the tokens are transformers' tokens."""
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    calls: dict = {}
    for name in ("load", "copy_out"):
        _spy(monkeypatch, engine.slots, name, calls)
    stream = engine.stream(params)
    prompts = {episode: [SHARED[episode]] for episode in range(3)}
    replies: dict = {episode: [] for episode in range(3)}
    for episode in prompts:
        stream.submit(episode, GenerationRequest(prompts[episode][0], seed=episode))
    while stream.pending:
        for episode, result in stream.next_finished():
            replies[episode].append(result)
            if len(replies[episode]) < 3:
                prompts[episode].append(prompts[episode][-1] + result.generation.text + "\nObservation:\nYou moved.\nThought:")
                stream.submit(episode, GenerationRequest(prompts[episode][-1], seed=10 * len(replies[episode]) + episode))
    assert engine.stats.slot_reuses == 6
    # Loads: the first turns' shared prefix, computed once, copied out and loaded into each slot.
    assert len(calls["load"]) == 3
    assert len(calls["copy_out"]) <= 1 + 3  # that prefix, and last turns whose parked slots expired
    for episode in prompts:
        expected = tiny_policy.generate_tokens(
            [GenerationRequest(prompt, seed=10 * turn + episode) for turn, prompt in enumerate(prompts[episode])], params
        )
        assert _ids(replies[episode]) == _ids(expected)


@pytest.mark.parametrize("park_steps", [PARK_STEPS, None])
@pytest.mark.parametrize("speculative_tokens", [0, 4])
def test_holes_left_by_parked_slots_change_no_token(tiny_policy, monkeypatch, speculative_tokens, park_steps):
    """A short request finishes first and stays parked in slot 0 while two others, sharing a long
    prefix it does not share, decode in slots 1-2: the decode batch has a hole and the shared
    prefix is read from slot 1. Nobody claims slot 0. With ``park_steps`` (off the CPU flash
    kernel), after that many steps what it holds goes to the prefix cache and the highest active
    sequence moves down into it; without (the default on the CPU), it stays parked and the hole
    stays in the batch. The tokens are transformers' throughout."""
    engine = NativePolicy.from_model(
        tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4, speculative_tokens=speculative_tokens
    )
    engine.park_steps = park_steps
    calls: dict = {}
    _spy(monkeypatch, engine.net, "forward", calls)
    _spy(monkeypatch, engine.slots, "move", calls)
    short_prompt = "Walls are # and floor is _. " * 8 + "Go."  # long enough to park, shares nothing with SHARED
    short = engine.stream(SamplingParams(temperature=0.0, max_new_tokens=2))
    long = engine.stream(SamplingParams(temperature=0.0, max_new_tokens=16))
    short.submit("short", GenerationRequest(short_prompt, seed=0))
    for index, prompt in enumerate(SHARED[:2]):
        long.submit(index, GenerationRequest(prompt, seed=index + 1))
    (_, short_result), = short.next_finished()
    parked = engine._parked[0].tokens
    results = {}
    while long.pending:
        results.update(long.next_finished())
    cascades = [(args[5], args[7]) for args, _ in calls["forward"] if len(args) > 7]  # (shared, shared_slot)
    assert any(shared >= 64 and slot == 1 for shared, slot in cascades)  # the cascade read slot 1, slot 0 parked
    if park_steps is None:
        assert not calls["move"] and engine._parked[0].tokens is parked  # still parked in its slot
        assert engine.cache.match(parked)[1] < len(parked)
    else:
        assert calls["move"]  # compaction after the park expired
        assert engine.cache.match(parked)[1] == len(parked)
    expected = tiny_policy.generate_tokens(
        [GenerationRequest(prompt, seed=index + 1) for index, prompt in enumerate(SHARED[:2])],
        SamplingParams(temperature=0.0, max_new_tokens=16),
    )
    assert [results[i].completion_token_ids for i in range(2)] == _ids(expected)
    alone = tiny_policy.generate_tokens([GenerationRequest(short_prompt, seed=0)], SamplingParams(temperature=0.0, max_new_tokens=2))
    assert short_result.completion_token_ids == alone[0].completion_token_ids


def test_a_branch_that_diverges_from_a_parked_slot_keeps_its_content_in_the_cache(tiny_policy):
    """A prompt that shares only the start of a parked slot's content (a branch from an earlier
    point) claims the slot, but what the slot held goes to the prefix cache first."""
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=4)
    episode = SHARED[0] + " I go right.\nAction: right\n\nObservation:\nYou are at 1.\nThought:"
    engine.generate_tokens([GenerationRequest(episode, seed=0)], params)
    held = engine._parked[0].tokens
    branch = SHARED[0] + " I go left."
    result = engine.generate_tokens([GenerationRequest(branch, seed=1)], params)[0]
    assert engine.stats.slot_reuses == 1
    assert engine.cache.match(held)[1] == len(held)
    assert _ids([result]) == _ids(tiny_policy.generate_tokens([GenerationRequest(branch, seed=1)], params))


def test_new_weights_or_released_memory_drop_parked_slots(tiny_policy):
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=4)
    results = engine.generate_tokens(_requests(SHARED[:2]), params)
    # A parked slot holds every position but the last sampled token's, which was never run.
    held = sorted(parked.tokens.tolist() for parked in engine._parked.values())
    assert held == sorted(r.prompt_token_ids + r.completion_token_ids[:-1] for r in results)
    engine.weights_changed()
    assert not engine._parked and not len(engine.cache)
    engine.generate_tokens(_requests(SHARED[:2]), params)
    assert engine._parked and engine.stats.slot_reuses == 0
    engine.release_memory()
    assert not engine._parked and engine.slots.count == 0


def test_a_prompt_extending_a_running_sequence_copies_its_keys_from_that_slot(tiny_policy, monkeypatch):
    """A branch submitted while the episode it branches from is still generating: the shared
    history is in no cache entry yet, only in the running sequence's slot, and is copied from
    there (positions past what the cache gave); the tokens are transformers' tokens."""
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4, speculative_tokens=0)
    calls: dict = {}
    _spy(monkeypatch, engine.slots, "move", calls)
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    history = SHARED[0] + " I go right.\nAction: right\n\nObservation:\nYou are at 1.\nThought: I go right again."
    stream = engine.stream(params)
    stream.submit("episode", GenerationRequest(history, seed=0))
    with engine._lock, torch.inference_mode():
        for _ in range(3):
            engine._step()  # the episode is running, its history in slot 0 only
    assert engine._active and not len(engine.cache)
    branch = history + "\nAction: left\n\nObservation:\nYou are at 0.\nThought:"
    computed = engine.stats.computed_prompt_tokens
    stream.submit("branch", GenerationRequest(branch, seed=1))
    results = {}
    while stream.pending:
        results.update(stream.next_finished())
    assert any(args[:2] == (0, 1) for args, _ in calls["move"])  # slot 0 -> the branch's slot 1
    history_tokens = len(engine.codec.encode(history, history))
    assert engine.stats.computed_prompt_tokens - computed <= len(results["branch"].prompt_token_ids) - history_tokens + 2
    expected = tiny_policy.generate_tokens(
        [GenerationRequest(history, seed=0), GenerationRequest(branch, seed=1)], params
    )
    assert [results[k].completion_token_ids for k in ("episode", "branch")] == _ids(expected)


def test_a_prompt_extending_a_running_reply_copies_into_the_reply(tiny_policy):
    """The shared part may run on into a running sequence's reply (a sibling sample a turn
    ahead): the positions its reply holds are copied too, but not its last sampled token, whose
    keys/values are not written yet."""
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4, speculative_tokens=0)
    params = SamplingParams(temperature=0.0, max_new_tokens=30)
    stream = engine.stream(params)
    stream.submit("episode", GenerationRequest(SHARED[0], seed=0))
    with engine._lock, torch.inference_mode():
        for _ in range(8):
            engine._step()
    (running,) = engine._active
    written = running.length  # = prompt + reply - 1
    ahead = running.prompt_ids + running.generated  # the whole reply so far, its last token unwritten
    probe = _Sequence(stream, "probe", "", ahead + [5, 6, 7], params, torch.Generator())
    probe.slot = 3
    with engine._lock, torch.inference_mode():
        engine._copy_from_slots([probe], [running])
    assert probe.length == written  # every written position, not the unwritten last one
    branch = GenerationRequest(engine.tokenizer.decode(ahead) + "\nAction: left", seed=1)
    request_ids = engine.codec.encode(branch.prompt, engine.codec.render(branch.prompt))
    shared = common_prefix_length(np.asarray(request_ids), np.asarray(ahead))
    assert shared > len(running.prompt_ids) + 2  # the test's premise: the text re-encodes into the reply
    cached = engine.stats.cached_prompt_tokens
    stream.submit("branch", branch)
    results = {}
    while stream.pending:
        results.update(stream.next_finished())
    assert engine.stats.cached_prompt_tokens - cached == min(shared, written, len(request_ids) - 1)
    expected = tiny_policy.generate_tokens([GenerationRequest(SHARED[0], seed=0), branch], params)
    assert [results[k].completion_token_ids for k in ("episode", "branch")] == _ids(expected)


def test_without_a_prefix_cache_nothing_is_reused_or_parked(tiny_policy):
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4, prefix_cache_mb=0)
    stream = engine.stream(SamplingParams(temperature=0.0, max_new_tokens=12))
    stream.submit(0, GenerationRequest(SHARED[0], seed=0))
    with engine._lock, torch.inference_mode():
        engine._step()
        engine._step()
    stream.submit(1, GenerationRequest(SHARED[0] + " more", seed=1))
    while stream.pending:
        stream.next_finished()
    assert engine.stats.cached_prompt_tokens == 0 and not engine._parked


def test_sequences_running_across_new_weights_are_neither_parked_nor_copied(tiny_policy):
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=4)
    stream = engine.stream(SamplingParams(temperature=0.0, max_new_tokens=12))
    stream.submit(0, GenerationRequest(SHARED[0], seed=0))
    with engine._lock, torch.inference_mode():
        engine._step()
        engine._step()
    engine.weights_changed()  # (the same weights here; what counts is that the engine was told)
    cached = engine.stats.cached_prompt_tokens
    stream.submit(1, GenerationRequest(SHARED[0] + " more", seed=1))
    while stream.pending:
        stream.next_finished()
    assert engine.stats.cached_prompt_tokens == cached  # nothing copied from the old-weights slot
    assert len(engine._parked) == 1  # only the sequence started after the change


def test_shared_prefixes_are_never_computed_in_a_parked_slot(tiny_policy):
    """New prompts sharing a prefix with each other are warmed in scratch slots while a slot is
    parked; the parked slot's keys/values survive (its continuation's tokens are transformers')."""
    engine = NativePolicy.from_model(tiny_policy.model, tiny_policy.tokenizer, max_batch_size=6)
    params = SamplingParams(temperature=0.0, max_new_tokens=4)
    first = engine.generate_tokens(_requests(SHARED[:2]), params)
    assert len(engine._parked) == 2
    other = "Count the boxes, then push each one onto its goal square, never into a corner. " * 3
    continuation = SHARED[1] + first[1].generation.text + "\nObservation:\nYou moved.\nThought:"
    batch = [GenerationRequest(continuation, seed=5)] + [GenerationRequest(other + f"Room {i}.", seed=6 + i) for i in range(2)]
    got = engine.generate_tokens(batch, params)
    assert engine.stats.slot_reuses == 1
    assert _ids(got) == _ids(tiny_policy.generate_tokens(batch, params))
    later = SHARED[0] + first[0].generation.text + "\nObservation:\nYou moved.\nThought:"
    result = engine.generate_tokens([GenerationRequest(later, seed=9)], params)
    assert _ids(result) == _ids(tiny_policy.generate_tokens([GenerationRequest(later, seed=9)], params))
