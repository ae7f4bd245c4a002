"""Pieces of the native engine's forward pass: row splitting for decode attention, grouped prompt attention."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leafe.policy import native_forward
from leafe.policy.native_forward import LlamaFamilyForward
from leafe.policy.native_layout import DecodeLayout, OwnSuffixPlan, hole_runs, piece_mask, split_rows


def _reads(positions, start, ranges, call_cost, holes=None):
    """What a split costs: per range, its rows times its widest row that is not a hole, plus a call."""
    holes = [False] * len(positions) if holes is None else holes
    return sum(
        (hi - lo) * max([p + 1 - start for p, h in zip(positions[lo:hi], holes[lo:hi]) if not h] or [0]) + call_cost
        for lo, hi in ranges
    )


def _best_by_enumeration(positions, start, max_chunks, call_cost, holes=None):
    """Every partition of the rows into ranges, each one called or, if it holds holes only, left out."""
    rows, best = len(positions), None
    holes = [False] * rows if holes is None else holes
    for k in range(1, rows + 1):
        for cuts in itertools.combinations(range(1, rows), k - 1):
            bounds = [0, *cuts, rows]
            segments = list(zip(bounds, bounds[1:]))
            options = [[True, False] if all(holes[lo:hi]) else [True] for lo, hi in segments]
            for called in itertools.product(*options):
                if sum(called) > max_chunks:
                    continue
                chosen = [seg for seg, c in zip(segments, called) if c]
                cost = _reads(positions, start, chosen, call_cost, holes)
                best = cost if best is None else min(best, cost)
    return best


def test_split_rows_is_the_cheapest_contiguous_split():
    rng = np.random.default_rng(0)
    for _ in range(300):
        rows, start = int(rng.integers(1, 9)), int(rng.integers(0, 50))
        positions = rng.integers(start, start + 300, rows)
        max_chunks, call_cost = int(rng.integers(1, 5)), int(rng.integers(0, 400))
        ranges = split_rows(positions, start, max_chunks, call_cost)
        assert ranges[0][0] == 0 and ranges[-1][1] == rows and len(ranges) <= max_chunks
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
        assert _reads(positions, start, ranges, call_cost) == _best_by_enumeration(positions, start, max_chunks, call_cost)


def test_split_rows_with_holes_is_the_cheapest_split_that_calls_every_row_with_a_query():
    rng = np.random.default_rng(1)
    for _ in range(300):
        rows, start = int(rng.integers(1, 8)), int(rng.integers(0, 50))
        positions = rng.integers(start, start + 300, rows)
        holes = rng.random(rows) < 0.4
        holes[rng.integers(rows)] = False  # a decode step has at least one token
        max_chunks, call_cost = int(rng.integers(1, 5)), int(rng.integers(0, 400))
        ranges = split_rows(positions, start, max_chunks, call_cost, holes)
        assert len(ranges) <= max_chunks and all(lo < hi for lo, hi in ranges)
        assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
        covered = {row for lo, hi in ranges for row in range(lo, hi)}
        assert all(row in covered for row in range(rows) if not holes[row])
        assert _reads(positions, start, ranges, call_cost, holes) == _best_by_enumeration(
            positions, start, max_chunks, call_cost, holes
        )


def test_split_rows_leaves_out_runs_of_holes():
    holes = np.array([False, True, True, True, True, False])
    assert split_rows(np.array([300, 900, 900, 900, 900, 310]), 0, 4, call_cost=256, holes=holes) == [(0, 1), (5, 6)]
    assert split_rows(np.array([300, 900, 900, 900, 900, 310]), 0, 1, call_cost=256, holes=holes) == [(0, 6)]


def test_split_rows_separates_long_rows_only_when_it_pays():
    assert split_rows(np.array([900, 910, 100, 105]), 0, 4, call_cost=256) == [(0, 2), (2, 4)]
    assert split_rows(np.array([900, 910, 100, 105]), 0, 1) == [(0, 4)]
    assert split_rows(np.array([500, 501, 502, 503]), 0, 4) == [(0, 4)]  # nothing to save


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


def test_own_suffix_calls_are_only_as_wide_as_their_own_slots():
    """Each call's queries are padded to the most tokens one of its slots has, not the batch's most,
    and every token's rows come back in place: token t's query rows are its own."""
    token_slots = torch.tensor([0, 0, 2, 5, 5, 5])  # slot 0: 2 tokens, slot 2: 1, slot 5: 3; 1, 3, 4 are holes
    positions = torch.tensor([300, 301, 120, 390, 391, 392])
    layout = DecodeLayout(token_slots, positions)
    kv_heads, group, hd = 2, 3, 4
    plan = OwnSuffixPlan(positions, 70, [(0, 1, 302), (2, 3, 121), (5, 6, 393)], layout, kv_heads, group, torch.float32)
    assert plan.widths == [2, 1, 3]
    grouped = torch.arange(len(positions) * kv_heads * group * hd, dtype=torch.float32).view(-1, kv_heads, group, hd)
    calls = plan.queries(grouped)
    assert [tuple(q.shape) for q in calls] == [(1, kv_heads, 2 * group, hd), (1, kv_heads, group, hd), (1, kv_heads, 3 * group, hd)]
    assert [tuple(m.shape) for m in plan.masks] == [(1, 1, 2 * group, 232), (1, 1, 1, 51), (1, 1, 3 * group, 323)]
    # The calls' "outputs" are their queries, log-sum-exps their first column: unpacking gives each token its own.
    out, lse = plan.unpack([(q, q[..., 0]) for q in calls])
    torch.testing.assert_close(out, grouped, rtol=0, atol=0)
    torch.testing.assert_close(lse, grouped[..., 0], rtol=0, atol=0)


def test_hole_runs_counts_runs_of_consecutive_holes():
    assert hole_runs(None) == 0
    assert hole_runs(np.array([False, True, True, False, True])) == 2
    assert hole_runs(np.array([True, False, False])) == 1


def test_piece_mask_lets_each_grouped_row_see_up_to_its_own_position():
    mask = piece_mask(3, 2, group=2, dtype=torch.float32, device="cpu")
    assert mask.shape == (4, 5)
    seen = mask == 0  # rows: token 0 head 0, token 0 head 1, token 1 head 0, token 1 head 1
    assert seen.tolist() == [[True] * 4 + [False], [True] * 4 + [False], [True] * 5, [True] * 5]
    assert torch.isneginf(mask[~seen]).all()


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
