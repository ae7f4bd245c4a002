"""PrefixCache: longest-prefix lookup, superseded entries, byte budget, runs of its store reused."""

import numpy as np
import pytest

from leafe.policy.prefix_cache import FreeRuns, PrefixCache, common_prefix_length


def _cache(capacity_bytes):  # (layers, k/v, kv_heads, n, head_dim) = (2, 2, 1, n, 4): 64 bytes per position
    return PrefixCache(capacity_bytes, layers=2, kv_heads=1, head_dim=4)


def _fill(value=0.0):
    return lambda kv: kv.fill_(value)


def test_common_prefix_length():
    a = np.array([1, 2, 3, 4])
    assert common_prefix_length(a, np.array([1, 2, 9])) == 2
    assert common_prefix_length(a, np.array([1, 2])) == 2
    assert common_prefix_length(a, np.array([7])) == 0
    assert common_prefix_length(a, np.array([], dtype=int)) == 0


def test_match_returns_the_longest_shared_prefix():
    cache = _cache(10_000)
    cache.insert([1, 2, 3], _fill(1.0))
    cache.insert([1, 5, 6, 7], _fill(2.0))
    entry, length = cache.match([1, 5, 6, 9, 9])
    assert length == 3 and float(entry.kv[0, 0, 0, 0, 0]) == 2.0
    assert cache.match([8]) == (None, 0)


def test_an_extending_sequence_replaces_its_prefix_and_covered_ones_are_skipped():
    cache = _cache(10_000)
    assert cache.insert([1, 2], _fill())
    assert cache.insert([1, 2, 3, 4], _fill())
    assert len(cache) == 1 and cache.nbytes == 4 * 64
    assert not cache.insert([1, 2, 3], lambda kv: pytest.fail("covered: must not build kv"))


def test_least_recently_used_entries_are_evicted_past_the_budget():
    cache = _cache(3 * 64 * 2)  # room for 6 positions
    cache.insert([1, 1, 1], _fill())
    cache.insert([2, 2, 2], _fill())
    cache.match([1, 1])  # touch: [2,2,2] becomes the oldest
    cache.insert([3, 3, 3], _fill())
    assert cache.match([2, 2, 2]) == (None, 0)
    assert cache.match([1, 1, 1])[1] == 3 and cache.match([3, 3, 3])[1] == 3
    assert cache.evictions == 1 and cache.nbytes <= cache.capacity_bytes
    assert not _cache(0).insert([1], _fill())


def test_free_runs_are_taken_first_fit_and_merged_when_given_back():
    runs = FreeRuns(10)
    assert [runs.take(3), runs.take(3), runs.take(3)] == [0, 3, 6]
    assert runs.take(2) is None  # one position left
    runs.give(3, 3)
    assert runs.take(4) is None  # 3..5 and 9: not consecutive
    runs.give(0, 3)  # merges with 3..5
    runs.give(6, 3)  # merges with 0..5 and 9
    assert runs.take(10) == 0 and runs.take(1) is None


def test_entries_are_views_of_one_store_and_dropped_runs_are_reused():
    cache = _cache(10 * 64)  # a store of 10 positions
    cache.insert([1, 2, 3], _fill(1.0))
    first = cache.match([1, 2, 3])[0]
    cache.insert([1, 2, 3, 4, 5], _fill(2.0))  # drops [1, 2, 3], then takes the same run
    second = cache.match([1, 2, 3, 4, 5])[0]
    assert second.start == first.start == 0 and second.kv.shape == (2, 2, 1, 5, 4)
    assert bool((second.kv == 2.0).all()) and cache.nbytes == 5 * 64


def test_a_run_too_fragmented_evicts_until_one_fits_and_an_oversized_entry_is_refused():
    cache = _cache(10 * 64)
    for token in (1, 2, 3):
        cache.insert([token] * 3, _fill(float(token)))  # runs 0..2, 3..5, 6..8
    cache.match([1])  # [2, 2, 2] and then [3, 3, 3] are now the oldest
    cache.insert([4] * 5, _fill(4.0))  # needs 5 consecutive positions: 3..7 after two evictions
    assert cache.evictions == 2 and len(cache) == 2
    assert cache.match([4] * 5)[0].start == 3 and bool((cache.match([1] * 3)[0].kv == 1.0).all())
    assert not cache.insert([5] * 11, _fill())  # larger than the store: nothing evicted
    assert len(cache) == 2


def test_clear_keeps_the_store_and_release_gives_it_back():
    cache = _cache(10 * 64)
    cache.insert([1, 2], _fill(1.0))
    store = cache.match([1])[0].kv.untyped_storage().data_ptr()
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.match([1, 2]) == (None, 0)
    cache.insert([7, 8, 9], _fill(2.0))
    assert cache.match([7])[0].kv.untyped_storage().data_ptr() == store
    cache.release()
    assert len(cache) == 0 and cache._store is None


def test_an_entry_too_large_for_the_store_is_refused_without_dropping_its_prefix():
    cache = _cache(10 * 64)
    cache.insert([1, 2, 3], _fill(1.0))
    assert not cache.insert([1, 2, 3] + [4] * 8, lambda kv: pytest.fail("too large: must not fill"))
    assert cache.match([1, 2, 3, 4])[1] == 3 and cache.evictions == 0


def test_a_failing_fill_stores_nothing_and_frees_its_positions():
    cache = _cache(10 * 64)
    cache.insert([1, 2], _fill(1.0))

    def broken(kv):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.insert([5] * 8, broken)  # the 8 positions after [1, 2]
    assert len(cache) == 1 and cache.nbytes == 2 * 64
    assert cache.insert([6] * 8, _fill(6.0)) and cache.match([6])[0].start == 2  # the same run again


def test_after_release_an_insert_allocates_the_store_again():
    cache = _cache(10 * 64)
    cache.insert([1, 2], _fill(1.0))
    cache.release()
    assert cache.insert([3, 4, 5], _fill(3.0)) and bool((cache.match([3])[0].kv == 3.0).all())


def test_a_store_that_cannot_be_allocated_turns_the_cache_off(monkeypatch, caplog):
    import leafe.policy.prefix_cache as prefix_cache

    monkeypatch.setattr(prefix_cache, "lazy_zeros", lambda shape, dtype: None)  # no mapping granted ...
    monkeypatch.setattr(prefix_cache, "memory_bytes", lambda: 1 << 60)
    cache = _cache(1 << 50)  # ... and a budget of 1 PiB, which plain memory cannot hold either
    assert cache.enabled and not cache.insert([1, 2], _fill())
    assert not cache.enabled and len(cache) == 0 and "prefix cache off" in caplog.text
    assert not cache.insert([1, 2], _fill()) and cache.match([1, 2]) == (None, 0)


def test_on_the_cpu_the_store_is_at_most_half_of_the_machine(monkeypatch):
    import leafe.policy.prefix_cache as prefix_cache

    monkeypatch.setattr(prefix_cache, "memory_bytes", lambda: 20 * 64)
    assert _cache(1 << 40)._runs.size == 10  # positions of 64 bytes in 10 * 64 bytes
