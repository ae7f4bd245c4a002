"""PrefixCache: longest-prefix lookup, superseded entries, byte budget."""

import numpy as np
import pytest
import torch

from leafe.policy.prefix_cache import PrefixCache, common_prefix_length


def _kv(n, fill=0.0):
    return torch.full((2, 2, 1, n, 4), fill)  # (layers, k/v, kv_heads, n, head_dim): 64 bytes per position


def test_common_prefix_length():
    a = np.array([1, 2, 3, 4])
    assert common_prefix_length(a, np.array([1, 2, 9])) == 2
    assert common_prefix_length(a, np.array([1, 2])) == 2
    assert common_prefix_length(a, np.array([7])) == 0
    assert common_prefix_length(a, np.array([], dtype=int)) == 0


def test_match_returns_the_longest_shared_prefix():
    cache = PrefixCache(10_000)
    cache.insert([1, 2, 3], lambda: _kv(3, 1.0))
    cache.insert([1, 5, 6, 7], lambda: _kv(4, 2.0))
    entry, length = cache.match([1, 5, 6, 9, 9])
    assert length == 3 and float(entry.kv[0, 0, 0, 0, 0]) == 2.0
    assert cache.match([8]) == (None, 0)


def test_an_extending_sequence_replaces_its_prefix_and_covered_ones_are_skipped():
    cache = PrefixCache(10_000)
    assert cache.insert([1, 2], lambda: _kv(2))
    assert cache.insert([1, 2, 3, 4], lambda: _kv(4))
    assert len(cache) == 1 and cache.nbytes == 4 * 64
    assert not cache.insert([1, 2, 3], lambda: pytest.fail("covered: must not build kv"))
    with pytest.raises(ValueError, match="3 positions"):
        cache.insert([9, 9], lambda: _kv(3))


def test_least_recently_used_entries_are_evicted_past_the_budget():
    cache = PrefixCache(3 * 64 * 2)  # room for 6 positions
    cache.insert([1, 1, 1], lambda: _kv(3))
    cache.insert([2, 2, 2], lambda: _kv(3))
    cache.match([1, 1])  # touch: [2,2,2] becomes the oldest
    cache.insert([3, 3, 3], lambda: _kv(3))
    assert cache.match([2, 2, 2]) == (None, 0)
    assert cache.match([1, 1, 1])[1] == 3 and cache.match([3, 3, 3])[1] == 3
    assert cache.evictions == 1 and cache.nbytes <= cache.capacity_bytes
    assert not PrefixCache(0).insert([1], lambda: _kv(1))
