"""The native engine's compiled attention kernel against plain softmax attention, and in the engine."""

from __future__ import annotations

import os
import platform
import shutil
import time

import pytest
import torch

from leafe.policy.base import GenerationRequest, SamplingParams
from leafe.policy.native import NativePolicy
from leafe.policy.native_kernels import HEAD_DIMS, ragged_attention_op
from leafe.policy.transformers_backend import TransformersPolicy

BUILDABLE = platform.system() == "Linux" and platform.machine() == "x86_64"


@pytest.fixture(scope="module")
def op():
    if os.environ.get("LEAFE_NATIVE_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        pytest.skip("LEAFE_NATIVE_KERNELS turns the kernel off")
    kernel = ragged_attention_op()
    if kernel is None and not BUILDABLE:
        pytest.skip("the kernel is built only on x86-64 Linux")
    assert kernel is not None, "the kernel did not build here (see the log for the compiler's message)"
    return kernel


def _reference(q, keys, values, group_slot, group_first, last, start, scale):
    """float64 softmax attention of each token's rows over keys start..last[t] of its group's slot."""
    tokens, kv_heads, group, hd = q.shape
    out = torch.empty(tokens, kv_heads, group, hd, dtype=torch.float64)
    lse = torch.empty(tokens, kv_heads, group, dtype=torch.float64)
    for n, slot in enumerate(group_slot.tolist()):
        for t in range(int(group_first[n]), int(group_first[n + 1])):
            k = keys[slot, :, start : int(last[t]) + 1].double()  # (kv_heads, keys, hd)
            v = values[slot, :, start : int(last[t]) + 1].double()
            scores = torch.einsum("hgd,hkd->hgk", q[t].double(), k) * scale
            lse[t] = torch.logsumexp(scores, dim=-1)
            out[t] = torch.einsum("hgk,hkd->hgd", torch.softmax(scores, dim=-1), v)
    return out, lse


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("group", [1, 3, 7])
@pytest.mark.parametrize("start", [0, 37])
def test_kernel_is_softmax_attention_over_each_group_s_own_keys(op, group, start, head_dim):
    gen = torch.Generator().manual_seed(group + start + head_dim)
    slots, kv_heads, room, capacity = 6, 2, 400, 300
    store = torch.randn(slots, kv_heads, room, head_dim, generator=gen) * 2
    # Views of larger stores, as the engine's slots are: the kernel follows their strides.
    keys, values = store[:, :, :capacity], torch.randn(slots, kv_heads, room, head_dim, generator=gen)[:, :, :capacity]
    counts = [1, 5, 3, 1, 21, 2]  # tokens per group: a decode step's drafts, a prompt piece
    group_slot = torch.tensor([4, 0, 5, 2, 1, 3])
    group_first = torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist())
    last = torch.cat([torch.arange(end - c + 1, end + 1) for c, end in zip(counts, [299, start + 10, 150, 64, 250, start + 20])])
    wide = torch.randn(len(last), kv_heads * group * head_dim + 32, generator=gen)  # tokens head_dim-strided apart
    q = wide[:, : kv_heads * group * head_dim].view(len(last), kv_heads, group, head_dim)
    scale = head_dim**-0.5
    out, lse = op(q, keys, values, group_slot, group_first, last, start, scale)
    expected_out, expected_lse = _reference(q, keys, values, group_slot, group_first, last, start, scale)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    torch.testing.assert_close(out.double(), expected_out, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse.double(), expected_lse, atol=2e-5, rtol=2e-5)


def test_kernel_refuses_what_it_cannot_attend(op):
    keys = torch.zeros(2, 1, 10, HEAD_DIMS[0])
    q = torch.zeros(1, 1, 1, HEAD_DIMS[0])
    first, slot = torch.tensor([0, 1]), torch.tensor([0])
    with pytest.raises(RuntimeError, match="capacity"):
        op(q, keys, keys, slot, first, torch.tensor([10]), 0, 1.0)
    with pytest.raises(RuntimeError, match="slot out of range"):
        op(q, keys, keys, torch.tensor([2]), first, torch.tensor([3]), 0, 1.0)
    with pytest.raises(RuntimeError, match="float32"):
        op(q.double(), keys, keys, slot, first, torch.tensor([3]), 0, 1.0)
    with pytest.raises(RuntimeError, match="head_dim 64 or 128"):
        op(torch.zeros(1, 1, 1, 96), torch.zeros(2, 1, 10, 96), torch.zeros(2, 1, 10, 96), slot, first, torch.tensor([3]), 0, 1.0)


HEADER = "Push every box onto a goal. Walls are #, floor is _, you are P. " * 6 + "\n\n"
PROMPTS = [f"Observation:\nYou are at {i}.\nThought: I am at {i}. I am at {i}. I am at" for i in range(5)]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("header", [HEADER, ""], ids=["cascade", "no-shared-prefix"])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_engine_on_the_kernel_samples_the_tokens_of_transformers(op, tiny_policy, temperature, header, head_dim, monkeypatch):
    """Models of each head size the kernel has: decode steps with drafts (over a shared prefix,
    the cascade, or not) and prompt pieces run on the kernel, and give transformers' tokens."""
    import transformers

    from leafe.policy import native
    from leafe.policy.speculative import propose_draft

    # A random model rarely repeats its context when sampling: always draft (see test_speculative).
    monkeypatch.setattr(native, "propose_draft", lambda context, room: propose_draft(context, room, min_ngram=1) or context[-room:].tolist())

    tokenizer = tiny_policy.tokenizer
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = transformers.LlamaForCausalLM(config).eval()
    engine = NativePolicy.from_model(model, tokenizer, max_batch_size=8)
    assert engine.net.ragged is op
    calls = []

    def counted(*args):
        calls.append(int(args[0].shape[0]))
        return op(*args)

    engine.net.ragged = counted
    params = SamplingParams(temperature=temperature, max_new_tokens=16)
    requests = [GenerationRequest(header + p, seed=i) for i, p in enumerate(PROMPTS)]
    ours = engine.generate_tokens(requests, params)
    theirs = TransformersPolicy.from_model(model, tokenizer).generate_tokens(requests, params)
    assert [r.completion_token_ids for r in ours] == [r.completion_token_ids for r in theirs]
    assert calls and max(calls) > 1  # the kernel ran, on several rows at once
    assert engine.stats.draft_tokens > 0  # ... including decode steps that verify drafts


def test_kernel_can_be_turned_off_and_a_failed_build_falls_back(monkeypatch, tmp_path, caplog):
    from leafe.policy import native_kernels

    monkeypatch.setattr(native_kernels, "_loaded", {})
    monkeypatch.setenv("LEAFE_NATIVE_KERNELS", "0")
    assert native_kernels.ragged_attention_op() is None
    if not BUILDABLE:
        return
    broken = tmp_path / "broken.cpp"
    broken.write_text("#error this source does not compile\n")
    monkeypatch.setattr(native_kernels, "_loaded", {})
    monkeypatch.setattr(native_kernels, "SOURCE", broken)
    monkeypatch.setenv("LEAFE_NATIVE_KERNELS", "1")
    monkeypatch.setenv("LEAFE_CACHE", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="leafe.policy.native_kernels"):
        assert native_kernels.ragged_attention_op() is None
    assert "could not build broken.cpp" in caplog.text and "using the flash kernel" in caplog.text


def test_a_new_build_deletes_builds_no_process_loaded_for_a_month(tmp_path):
    from leafe.policy import native_kernels

    kernels = tmp_path / "kernels"
    builds = {name: kernels / name for name in ("current", "used-yesterday", "stale", "stale-half-built")}
    for name, build in builds.items():
        build.mkdir(parents=True)
        if name != "stale-half-built":
            (build / f"{native_kernels.MODULE}.so").write_bytes(b"")
    month = native_kernels.STALE_DAYS * 86400
    for name, age in [("current", 2 * month), ("used-yesterday", 86400), ("stale", month + 86400), ("stale-half-built", month + 60)]:
        target = builds[name] / f"{native_kernels.MODULE}.so" if name != "stale-half-built" else builds[name]
        os.utime(target, (time.time() - age, time.time() - age))
    native_kernels._prune_stale(kernels, keep=builds["current"])
    assert sorted(p.name for p in kernels.iterdir()) == ["current", "used-yesterday"]


def test_loading_a_build_marks_it_used(op, tmp_path):
    from leafe.policy import native_kernels

    directory = native_kernels.build_directory()
    native_kernels._built_or_build(directory)  # (op may have come from another $LEAFE_CACHE)
    assert native_kernels.build_directory() == directory  # building does not change the flags it hashes
    library = directory / f"{native_kernels.MODULE}.so"
    copy = tmp_path / "build" / library.name
    copy.parent.mkdir()
    shutil.copy(library, copy)
    long_ago = time.time() - 2 * native_kernels.STALE_DAYS * 86400
    os.utime(copy, (long_ago, long_ago))
    module = native_kernels._built_or_build(copy.parent)
    assert callable(module.ragged_attention)
    assert copy.stat().st_mtime > time.time() - 3600  # so a build elsewhere does not delete it
