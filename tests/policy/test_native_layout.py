"""The native engine's batch layout (leafe.policy.native_layout): row splits for decode attention,
decode layouts with holes, per-call query packing, prompt-piece masks."""

from __future__ import annotations

import itertools

import numpy as np
import torch

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
