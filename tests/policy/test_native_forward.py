"""Pieces of the native engine's forward pass: split decode attention, grouped prompt attention, packed weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leafe.policy import native_forward
from leafe.policy.native_forward import LlamaFamilyForward
from leafe.policy.native_layout import DecodeLayout, hole_runs, piece_mask, split_rows


def _slots_sharing_a_prefix(net, shared, gen, slots=6, capacity=400):
    """Random keys and values ``(slots, kv_heads, capacity, head_dim)`` whose first ``shared``
    positions are the same in every slot."""
    keys = torch.randn(slots, net.kv_heads, capacity, net.head_dim, generator=gen)
    values = torch.randn(slots, net.kv_heads, capacity, net.head_dim, generator=gen)
    keys[1:, :, :shared], values[1:, :, :shared] = keys[0, :, :shared], values[0, :, :shared]
    return keys, values


def test_chunked_own_suffix_attention_matches_one_call(tiny_policy):
    if native_forward._CPU_FLASH is None:
        pytest.skip("this PyTorch has no CPU flash-attention kernel")
    net = LlamaFamilyForward(tiny_policy.model)
    gen = torch.Generator().manual_seed(0)
    shared = 70
    keys, values = _slots_sharing_a_prefix(net, shared, gen)
    positions = torch.tensor([390, 371, 80, 95, 90, 399])
    q = torch.randn(len(positions), net.num_heads, net.head_dim, generator=gen)
    whole = net._cascade_attention(q, keys, values, positions, shared)
    ranges = split_rows(positions.numpy(), shared, 4, call_cost=0)
    assert len(ranges) > 1
    chunks = [(lo, hi, int(positions[lo:hi].max()) + 1) for lo, hi in ranges]
    torch.testing.assert_close(net._cascade_attention(q, keys, values, positions, shared, chunks), whole, atol=1e-6, rtol=1e-6)


def test_holes_left_out_of_own_suffix_calls_change_no_token_s_attention(tiny_policy):
    """Slots 1, 3 and 4 have no token (parked): chunks that leave them out give the real tokens
    the attention of one call over every slot."""
    if native_forward._CPU_FLASH is None:
        pytest.skip("this PyTorch has no CPU flash-attention kernel")
    net = LlamaFamilyForward(tiny_policy.model)
    gen = torch.Generator().manual_seed(0)
    shared = 70
    keys, values = _slots_sharing_a_prefix(net, shared, gen)
    token_slots = torch.tensor([0, 0, 2, 5, 5, 5])
    positions = torch.tensor([300, 301, 120, 390, 391, 392])
    layout = DecodeLayout(token_slots, positions)
    holes = layout.holes.numpy()
    assert holes.tolist() == [False, True, False, True, True, False]
    q = torch.randn(len(positions), net.num_heads, net.head_dim, generator=gen)
    whole = net._flash_cascade_attention(q, keys, values, positions, shared, None, layout)
    last = np.where(holes, shared, layout.ends.numpy())
    ranges = split_rows(last, shared, 4 + hole_runs(holes), call_cost=0, holes=holes)
    assert ranges == [(0, 1), (2, 3), (5, 6)]
    chunks = [(lo, hi, int(last[lo:hi].max()) + 1) for lo, hi in ranges]
    got = net._flash_cascade_attention(q, keys, values, positions, shared, chunks, layout)
    torch.testing.assert_close(got, whole, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("start", [0, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_piece_attention_matches_sdpa(tiny_policy, start, dtype):
    if native_forward._CPU_FLASH is None:
        pytest.skip("this PyTorch has no CPU flash-attention kernel")
    net = LlamaFamilyForward(tiny_policy.model)
    group = net.num_heads // net.kv_heads
    assert group > 1  # the grouping is what is under test
    gen = torch.Generator().manual_seed(1)
    count, end = 11, start + 11
    keys = torch.randn(3, net.kv_heads, end + 20, net.head_dim, generator=gen)  # a slot wider than the piece
    values = torch.randn(3, net.kv_heads, end + 20, net.head_dim, generator=gen)
    q = torch.randn(count, net.num_heads, net.head_dim, generator=gen)
    seen = torch.arange(end)[None, :] <= torch.arange(start, end)[:, None]
    expected = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys[1:2, :, :end], values[1:2, :, :end], attn_mask=seen, enable_gqa=True
    )[0].transpose(0, 1)
    out = torch.full((count + 2, net.num_heads, net.head_dim), 7.0, dtype=dtype)
    mask = piece_mask(start, count, group, dtype, "cpu")
    net._piece_attention(q.to(dtype), keys[1:2, :, :end].to(dtype), values[1:2, :, :end].to(dtype), mask, out[1:-1])
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out[1:-1].float(), expected, atol=tolerance, rtol=tolerance)
    assert (out[0] == 7).all() and (out[-1] == 7).all()  # only its own rows are written


def test_short_pieces_attend_grouped_and_long_ones_on_sdpa_both_as_the_model(tiny_policy, monkeypatch):
    from leafe.policy.kv_slots import KVSlots

    net = LlamaFamilyForward(tiny_policy.model)
    grouped_calls = []
    piece_attention = net._piece_attention
    monkeypatch.setattr(net, "_piece_attention", lambda q, *rest: grouped_calls.append(len(q)) or piece_attention(q, *rest))
    tokens = [5 + (i * 7) % 300 for i in range(native_forward.GROUPED_PIECE_TOKENS + 40)]
    split = len(tokens) - 20
    slots = KVSlots(net, 2)
    slots.reserve(2, len(tokens) + 1)
    empty = torch.empty(0, dtype=torch.long)
    with torch.inference_mode():
        whole = net.forward(slots.keys, slots.values, empty, empty, [(0, 0, tokens)])  # one long piece
        net.forward(slots.keys, slots.values, empty, empty, [(1, 0, tokens[:split])])
        tail = net.forward(slots.keys, slots.values, empty, empty, [(1, split, tokens[split:])])  # a short one after it
        reference = tiny_policy.model(torch.tensor([tokens])).logits[0, -1]
    flash = native_forward._CPU_FLASH is not None
    assert grouped_calls == ([20] * len(net.layers) if flash else [])  # only the short piece went grouped
    torch.testing.assert_close(net.logits(whole)[0], reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(net.logits(tail)[0], reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "plain"])
def test_pack_weights_makes_every_copy_a_pass_reads(tiny_policy, fuse):
    """After pack_weights, passes of every size find each weight's oneDNN copy made: none is
    added or remade."""
    import copy

    from leafe.policy.base import SamplingParams
    from leafe.policy.native import NativePolicy
    from tests.policy.test_native import _requests

    engine = NativePolicy.from_model(copy.deepcopy(tiny_policy.model), tiny_policy.tokenizer, max_batch_size=8)
    if not engine.net.packed.enabled:
        pytest.skip("this PyTorch build has no oneDNN linear")
    if fuse:
        assert engine.net.fuse_projections()
    engine.net.pack_weights()
    made = {key: entry[2] for key, entry in engine.net.packed._entries.items()}
    layers = len(engine.net.layers)
    assert len(made) == layers * (4 if fuse else 7) + 1  # + the LM head
    engine.generate_tokens(_requests(), SamplingParams(temperature=0.0, max_new_tokens=12))
    assert {key: entry[2] for key, entry in engine.net.packed._entries.items()} == made
