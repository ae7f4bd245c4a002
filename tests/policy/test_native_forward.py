"""Pieces of the native engine's forward pass: row splitting for decode attention."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from leafe.policy import native_forward
from leafe.policy.native_forward import LlamaFamilyForward, split_rows


def _reads(positions, start, ranges, call_cost):
    return sum((hi - lo) * (max(positions[lo:hi]) + 1 - start) + call_cost for lo, hi in ranges)


def _best_by_enumeration(positions, start, max_chunks, call_cost):
    rows, best = len(positions), None
    for k in range(1, max_chunks + 1):
        for cuts in itertools.combinations(range(1, rows), k - 1):
            bounds = [0, *cuts, rows]
            cost = _reads(positions, start, list(zip(bounds, bounds[1:])), call_cost)
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


def test_split_rows_separates_long_rows_only_when_it_pays():
    assert split_rows(np.array([900, 910, 100, 105]), 0, 4, call_cost=256) == [(0, 2), (2, 4)]
    assert split_rows(np.array([900, 910, 100, 105]), 0, 1) == [(0, 4)]
    assert split_rows(np.array([500, 501, 502, 503]), 0, 4) == [(0, 4)]  # nothing to save


def test_chunked_own_suffix_attention_matches_one_call(tiny_policy):
    if native_forward._CPU_FLASH is None:
        pytest.skip("this PyTorch has no CPU flash-attention kernel")
    net = LlamaFamilyForward(tiny_policy.model)
    gen = torch.Generator().manual_seed(0)
    slots, capacity, shared = 6, 400, 70
    keys = torch.randn(slots, net.kv_heads, capacity, net.head_dim, generator=gen)
    values = torch.randn(slots, net.kv_heads, capacity, net.head_dim, generator=gen)
    keys[1:, :, :shared], values[1:, :, :shared] = keys[0, :, :shared], values[0, :, :shared]
    positions = torch.tensor([390, 371, 80, 95, 90, 399])
    q = torch.randn(len(positions), net.num_heads, net.head_dim, generator=gen)
    whole = net._cascade_attention(q, keys, values, positions, shared)
    ranges = split_rows(positions.numpy(), shared, 4, call_cost=0)
    assert len(ranges) > 1
    chunks = [(lo, hi, int(positions[lo:hi].max()) + 1) for lo, hi in ranges]
    torch.testing.assert_close(net._cascade_attention(q, keys, values, positions, shared, chunks), whole, atol=1e-6, rtol=1e-6)
