"""Tests for the Pass@k estimator and the bootstrap confidence intervals over tasks."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from leafe.eval.passk import PassAtK, compute_pass_at_k, paired_difference, pass_at_k


def _enumerated_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of the k-subsets of a 0/1 sample vector that contain at least one success."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return Fraction(sum(any(subset) for subset in subsets), len(subsets))


def _exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def _random_counts(num_tasks: int, n: int, seed: int) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(seed)
    rates = rng.beta(0.7, 1.5, size=num_tasks)
    return {f"task/{i:04d}": (n, int(rng.binomial(n, p))) for i, p in enumerate(rates)}


# --- pass_at_k ---------------------------------------------------------------------------------


def test_matches_enumeration_of_all_k_subsets() -> None:
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = float(_enumerated_pass_at_k(n, c, k))
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_no_success_is_zero_and_all_success_is_one(n: int) -> None:
    for k in range(1, n + 1):
        assert pass_at_k(n, 0, k) == 0.0
        assert pass_at_k(n, n, k) == 1.0


def test_exactly_one_when_every_k_subset_must_hit_a_success() -> None:
    # n - c < k: every k-subset contains a success, so the estimate is exactly 1, not 1 - eps.
    assert pass_at_k(10, 7, 4) == 1.0
    assert pass_at_k(1000, 501, 500) == 1.0


def test_k_one_is_the_success_rate() -> None:
    assert pass_at_k(20, 5, 1) == pytest.approx(0.25, abs=1e-15)


def test_k_above_n_raises_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"k=5 exceeds the n=4 samples per task; lower k or raise n"):
        pass_at_k(4, 1, 5)


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (5, -1, 1), (5, 6, 1), (5, 2, 0), (5, 2, -3)])
def test_out_of_range_arguments_raise(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_numpy_integers_are_accepted_and_floats_refused() -> None:
    assert pass_at_k(np.int64(10), np.int32(3), np.int16(2)) == pytest.approx(
        float(_exact_pass_at_k(10, 3, 2)), abs=1e-15
    )
    with pytest.raises(TypeError):
        pass_at_k(10, 3.0, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "c", "k"), [(1000, 3, 500), (1000, 1, 1), (5000, 40, 2500), (2000, 1, 3)])
def test_large_n_is_finite_and_matches_exact_big_integer_value(n: int, c: int, k: int) -> None:
    # C(5000, 2500) has ~1500 digits: a float ratio of binomials would overflow.
    value = pass_at_k(n, c, k)
    expected = float(_exact_pass_at_k(n, c, k))
    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-11)


# --- compute_pass_at_k -------------------------------------------------------------------------


def test_mean_is_the_average_of_per_task_estimates_and_ks_are_sorted_and_deduped() -> None:
    counts = {"a": (8, 0), "b": (8, 3), "c": (8, 8), "d": (8, 1)}
    result = compute_pass_at_k(counts, ks=[8, 1, 4, 4, 2], num_bootstrap=50)
    assert result.ks == (1, 2, 4, 8)
    for k, mean in zip(result.ks, result.mean):
        expected = sum(_exact_pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        assert mean == pytest.approx(float(expected), abs=1e-12)
    assert result.num_tasks == 4
    assert result.samples_per_task == 8
    assert result.num_bootstrap == 50
    assert result.per_task == counts
    assert len(result.ci_low) == len(result.ci_high) == 4


def test_interval_contains_the_mean_and_curves_are_monotone_in_k() -> None:
    result = compute_pass_at_k(_random_counts(200, 16, seed=1), ks=[1, 2, 4, 8, 16])
    for low, mean, high in zip(result.ci_low, result.mean, result.ci_high):
        assert 0.0 <= low < mean < high <= 1.0
    # The same resampled tasks serve every k, so each bound is non-decreasing in k like the mean.
    for series in (result.mean, result.ci_low, result.ci_high):
        assert all(a <= b for a, b in zip(series, series[1:]))


def test_interval_is_the_percentile_of_task_resampled_means() -> None:
    counts = _random_counts(37, 8, seed=2)
    ks = [1, 3, 8]
    result = compute_pass_at_k(counts, ks, num_bootstrap=300, confidence=0.9, seed=5)
    # Reference: gather the (B, T, K) resampled estimates with the same seeded indices.
    estimates = np.array([[pass_at_k(n, c, k) for k in ks] for n, c in counts.values()])
    indices = np.random.default_rng(5).integers(0, len(counts), size=(300, len(counts)))
    boot = estimates[indices].mean(axis=1)
    np.testing.assert_allclose(result.ci_low, np.quantile(boot, 0.05, axis=0), atol=1e-12)
    np.testing.assert_allclose(result.ci_high, np.quantile(boot, 0.95, axis=0), atol=1e-12)


def test_interval_shrinks_with_more_tasks() -> None:
    few = _random_counts(50, 8, seed=3)
    # The same task mix repeated 16 times: the interval width should shrink about 4x.
    many = {f"{task_id}/copy{j}": nc for j in range(16) for task_id, nc in few.items()}
    ks = [1, 2, 4, 8]
    small = compute_pass_at_k(few, ks)
    large = compute_pass_at_k(many, ks)
    np.testing.assert_allclose(small.mean, large.mean, atol=1e-12)
    for i in range(len(ks)):
        width_small = small.ci_high[i] - small.ci_low[i]
        width_large = large.ci_high[i] - large.ci_low[i]
        assert width_large < width_small / 2.5


def test_same_seed_same_interval_other_seed_other_interval() -> None:
    counts = _random_counts(60, 8, seed=4)
    first = compute_pass_at_k(counts, [1, 4], seed=7)
    assert compute_pass_at_k(counts, [1, 4], seed=7) == first
    other = compute_pass_at_k(counts, [1, 4], seed=8)
    assert other.mean == first.mean
    assert (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)


def test_single_task_interval_collapses_to_the_mean() -> None:
    result = compute_pass_at_k({"only": (10, 3)}, [1, 2, 5])
    assert result.ci_low == result.mean == result.ci_high


def test_mixed_n_raises_naming_the_task() -> None:
    with pytest.raises(ValueError, match=r"task 'b' has n=10 samples but task 'a' has n=8"):
        compute_pass_at_k({"a": (8, 1), "b": (10, 2)}, [1])


def test_k_above_n_raises_the_estimator_error() -> None:
    with pytest.raises(ValueError, match=r"k=16 exceeds the n=8 samples per task; lower k or raise n"):
        compute_pass_at_k({"a": (8, 1)}, [1, 16])


def test_invalid_task_counts_name_the_task() -> None:
    with pytest.raises(ValueError, match=r"task 'bad'"):
        compute_pass_at_k({"ok": (4, 1), "bad": (4, 5)}, [1])


@pytest.mark.parametrize(
    ("counts", "ks", "kwargs"),
    [
        ({}, [1], {}),
        ({"a": (4, 1)}, [], {}),
        ({"a": (4, 1)}, [1], {"num_bootstrap": 0}),
        ({"a": (4, 1)}, [1], {"confidence": 1.0}),
        ({"a": (4, 1)}, [1], {"confidence": 0.0}),
    ],
)
def test_invalid_inputs_raise(counts: dict, ks: list[int], kwargs: dict) -> None:
    with pytest.raises(ValueError):
        compute_pass_at_k(counts, ks, **kwargs)


def test_round_trips_through_json() -> None:
    result = compute_pass_at_k(_random_counts(25, 4, seed=6), [1, 2, 4], num_bootstrap=200)
    restored = PassAtK.from_dict(json.loads(json.dumps(result.to_dict())))
    assert restored == result
    assert isinstance(restored.ks, tuple) and isinstance(restored.per_task["task/0000"], tuple)


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        PassAtK(
            ks=(1, 2),
            mean=(0.1,),
            ci_low=(0.0,),
            ci_high=(0.2,),
            num_tasks=1,
            samples_per_task=2,
            confidence=0.95,
            num_bootstrap=10,
            per_task={"a": (2, 1)},
        )


def test_paired_difference_by_hand():
    a = compute_pass_at_k({"t1": (4, 0), "t2": (4, 4)}, ks=[1, 2])
    b = compute_pass_at_k({"t1": (4, 2), "t2": (4, 4)}, ks=[1, 2, 4])
    d = paired_difference(a, b, num_bootstrap=2000)
    assert d.ks == (1, 2) and d.num_tasks == 2  # the ks both runs report
    # t1 gains 2/4 = 0.5 at k=1 and 1 - C(2,2)/C(4,2) = 5/6 at k=2; t2 gains nothing
    assert d.difference == pytest.approx((0.25, 5 / 12))
    # resampled means of {0.5, 0} are 0, 0.25 or 0.5: the 95% interval spans them
    assert d.ci_low == pytest.approx((0.0, 0.0)) and d.ci_high == pytest.approx((0.5, 5 / 6))
    same = paired_difference(a, a)
    assert same.difference == (0.0, 0.0) and same.ci_low == (0.0, 0.0) and same.ci_high == (0.0, 0.0)


def test_paired_interval_is_tighter_than_unpaired_ones_for_a_uniform_gain():
    counts = {f"t{i}": (8, c) for i, c in enumerate([0, 1, 2, 3, 4, 5, 6, 7] * 2)}
    better = {task: (n, c + 1) for task, (n, c) in counts.items()}
    a, b = compute_pass_at_k(counts, ks=[1]), compute_pass_at_k(better, ks=[1])
    d = paired_difference(a, b)
    assert d.difference[0] == pytest.approx(1 / 8)
    assert (d.ci_low[0], d.ci_high[0]) == pytest.approx((1 / 8, 1 / 8))  # every task gains exactly 1/8
    assert a.ci_high[0] > b.ci_low[0]  # the unpaired intervals overlap


def test_paired_difference_needs_the_same_tasks_and_a_shared_k():
    a = compute_pass_at_k({"t1": (4, 1)}, ks=[1])
    with pytest.raises(ValueError, match="different tasks.*only in B: \\['t2'\\]"):
        paired_difference(a, compute_pass_at_k({"t1": (4, 1), "t2": (4, 0)}, ks=[1]))
    with pytest.raises(ValueError, match="share no k"):
        paired_difference(a, compute_pass_at_k({"t1": (4, 1)}, ks=[2]))
