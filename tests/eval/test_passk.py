"""The Pass@k estimator against exact enumeration, its edge cases, and the bootstrap CI."""

import itertools
from fractions import Fraction
from math import comb

import pytest

from leafe.eval.passk import PassAtK, compute_pass_at_k, pass_at_k


def _enumerated(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c of them successes) with at least one success."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_matches_exact_enumeration_over_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_enumerated(n, c, k), abs=1e-12), (n, c, k)


def test_edge_cases():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 8) == 1.0  # n - c < k: every k-subset holds a success
    assert pass_at_k(1, 1, 1) == 1.0


@pytest.mark.parametrize("args, message", [((4, 1, 5), "exceeds the n=4"), ((4, 5, 1), "c=5"), ((0, 0, 1), "n=0"), ((4, 1, 0), "k=0")])
def test_invalid_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(*args)


def test_large_n_is_stable_and_exact():
    n, c, k = 1000, 3, 500
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_mean_ci_and_determinism():
    counts = {f"t{i}": (8, c) for i, c in enumerate([0, 1, 2, 8, 0, 3])}
    result = compute_pass_at_k(counts, ks=[4, 1, 1, 8], seed=3)
    assert result.ks == (1, 4, 8) and result.num_tasks == 6 and result.samples_per_task == 8
    expected = [sum(pass_at_k(8, c, k) for _, c in counts.values()) / 6 for k in result.ks]
    assert result.mean == pytest.approx(expected)
    for low, mean, high in zip(result.ci_low, result.mean, result.ci_high):
        assert 0.0 <= low <= mean <= high <= 1.0 and low < high
    assert compute_pass_at_k(counts, ks=[1, 4, 8], seed=3) == result
    assert list(result.mean) == sorted(result.mean)


def test_ci_shrinks_with_more_tasks():
    few = compute_pass_at_k({f"t{i}": (4, i % 5) for i in range(10)}, ks=[1])
    many = compute_pass_at_k({f"t{i}": (4, i % 5) for i in range(1000)}, ks=[1])
    assert many.ci_high[0] - many.ci_low[0] < (few.ci_high[0] - few.ci_low[0]) / 3


def test_invalid_counts():
    with pytest.raises(ValueError, match="'b' has n=5"):
        compute_pass_at_k({"a": (4, 1), "b": (5, 1)}, ks=[1])
    with pytest.raises(ValueError, match="empty"):
        compute_pass_at_k({}, ks=[1])
    with pytest.raises(ValueError, match="exceeds"):
        compute_pass_at_k({"a": (4, 1)}, ks=[8])


def test_round_trip():
    result = compute_pass_at_k({"a": (4, 1), "b": (4, 0)}, ks=[1, 2, 4])
    assert PassAtK.from_dict(result.to_dict()) == result
