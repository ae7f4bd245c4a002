"""Pass@k: the unbiased estimator and bootstrap confidence intervals over tasks.

For one task with ``n`` sampled attempts of which ``c`` succeeded, the probability that at
least one of ``k`` attempts drawn without replacement succeeds is estimated without bias by
(Chen et al., 2021, "Evaluating Large Language Models Trained on Code", arXiv:2107.03374)::

    pass@k = 1 - C(n - c, k) / C(n, k)
           = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)      (exactly 1 when n - c < k)

The product form never builds a binomial coefficient, so it stays finite and accurate for any
``n``. The benchmark score is the mean of the per-task estimates; its uncertainty comes from
which tasks were drawn, so the confidence interval is a percentile bootstrap over *tasks*
(the same resampled task indices for every ``k``, hence the interval curves are monotone in
``k`` like the mean curve).

    counts = {"sokoban/test/0000": (8, 3), "sokoban/test/0001": (8, 0)}   # task -> (n, c)
    result = compute_pass_at_k(counts, ks=[1, 2, 4, 8])
    result.mean, result.ci_low, result.ci_high                           # one value per k
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np


def _check_counts(n: int, c: int) -> None:
    if n < 1:
        raise ValueError(f"n={n}: need at least one sample per task")
    if not 0 <= c <= n:
        raise ValueError(f"c={c}: the number of successes must lie in [0, n={n}]")


def _check_k(k: int, n: int) -> None:
    if k < 1:
        raise ValueError(f"k={k}: k must be at least 1")
    if k > n:
        raise ValueError(f"k={k} exceeds the n={n} samples per task; lower k or raise n")


def pass_at_k(n: SupportsIndex, c: SupportsIndex, k: SupportsIndex) -> float:
    """Unbiased Pass@k estimate for one task: ``1 - C(n-c, k) / C(n, k)``.

    Args:
        n: samples drawn for the task (>= 1). Python or numpy integers.
        c: how many of them succeeded (0 <= c <= n).
        k: attempts allowed (1 <= k <= n).

    Returns:
        A float in [0, 1]: exactly 0.0 when ``c == 0`` and exactly 1.0 when ``n - c < k``.

    Raises:
        ValueError: on out-of-range arguments, in particular ``k > n``.
        TypeError: on non-integer arguments (floats are refused, not truncated).
    """
    n, c, k = operator.index(n), operator.index(c), operator.index(k)
    _check_counts(n, c)
    _check_k(k, n)
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


@dataclass(frozen=True)
class PassAtK:
    """Pass@k of one model on one task set, with confidence intervals.

    Attributes:
        ks: the k values, strictly increasing; every sequence below has one entry per k.
        mean: Pass@k averaged over tasks, as a fraction in [0, 1].
        ci_low: lower end of the bootstrap confidence interval of ``mean``.
        ci_high: upper end of the bootstrap confidence interval of ``mean``.
        num_tasks: number of tasks averaged.
        samples_per_task: n, the number of samples drawn for every task.
        confidence: coverage of the interval, e.g. 0.95.
        num_bootstrap: bootstrap resamples of the task set behind the interval.
        per_task: task_id -> (n, c), the raw counts the estimate was computed from.
    """

    ks: tuple[int, ...]
    mean: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    num_tasks: int
    samples_per_task: int
    confidence: float
    num_bootstrap: int
    per_task: dict[str, tuple[int, int]]

    def __post_init__(self) -> None:
        lengths = {len(self.ks), len(self.mean), len(self.ci_low), len(self.ci_high)}
        if len(lengths) != 1:
            raise ValueError("ks, mean, ci_low and ci_high must have the same length")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); inverse of :meth:`from_dict`."""
        return {
            "ks": list(self.ks),
            "mean": list(self.mean),
            "ci_low": list(self.ci_low),
            "ci_high": list(self.ci_high),
            "num_tasks": self.num_tasks,
            "samples_per_task": self.samples_per_task,
            "confidence": self.confidence,
            "num_bootstrap": self.num_bootstrap,
            "per_task": {task_id: [n, c] for task_id, (n, c) in self.per_task.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PassAtK:
        """Rebuild from :meth:`to_dict` output; keys it does not know are ignored."""
        return cls(
            ks=tuple(int(k) for k in data["ks"]),
            mean=tuple(float(x) for x in data["mean"]),
            ci_low=tuple(float(x) for x in data["ci_low"]),
            ci_high=tuple(float(x) for x in data["ci_high"]),
            num_tasks=int(data["num_tasks"]),
            samples_per_task=int(data["samples_per_task"]),
            confidence=float(data["confidence"]),
            num_bootstrap=int(data["num_bootstrap"]),
            per_task={
                str(task_id): (int(n), int(c)) for task_id, (n, c) in data["per_task"].items()
            },
        )


def compute_pass_at_k(
    counts: Mapping[str, tuple[int, int]],
    ks: Sequence[int],
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PassAtK:
    """Mean Pass@k over tasks with a percentile bootstrap confidence interval over tasks.

    Args:
        counts: task_id -> (n, c) for T >= 1 tasks; every task must have the same n.
        ks: k values (K of them after sorting and removing duplicates), each in [1, n].
        num_bootstrap: B >= 1, resamples of the T tasks (with replacement).
        confidence: coverage of the interval, in (0, 1).
        seed: seeds ``np.random.default_rng``; the same inputs and seed give the same interval.

    Returns:
        A :class:`PassAtK` whose ``mean``/``ci_low``/``ci_high`` have length K. Internally the
        per-task estimates form a (T, K) matrix, the resampled task indices a (B, T) matrix
        shared by every k, and the resampled means a (B, K) matrix whose column percentiles
        give the interval.

    Raises:
        ValueError: empty ``counts`` or ``ks``, invalid counts (the message names the task),
            tasks with different n, ``k > n``, or invalid ``num_bootstrap``/``confidence``.
    """
    if not counts:
        raise ValueError("counts is empty: need at least one task to compute Pass@k")
    if not ks:
        raise ValueError("ks is empty: need at least one k")
    if num_bootstrap < 1:
        raise ValueError(f"num_bootstrap={num_bootstrap}: need at least one resample")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: must lie strictly between 0 and 1")

    per_task: dict[str, tuple[int, int]] = {}
    for task_id, (n_raw, c_raw) in counts.items():
        n, c = operator.index(n_raw), operator.index(c_raw)
        try:
            _check_counts(n, c)
        except ValueError as error:
            raise ValueError(f"task {task_id!r}: {error}") from error
        per_task[task_id] = (n, c)

    first_task, (n, _) = next(iter(per_task.items()))
    for task_id, (task_n, _) in per_task.items():
        if task_n != n:
            raise ValueError(
                f"task {task_id!r} has n={task_n} samples but task {first_task!r} has n={n}; "
                "Pass@k needs the same number of samples for every task"
            )
    sorted_ks = tuple(sorted({operator.index(k) for k in ks}))
    for k in sorted_ks:
        _check_k(k, n)

    estimates = _estimates(list(per_task.values()), sorted_ks)
    num_tasks = len(per_task)
    mean = estimates.mean(axis=0)

    low, high = _bootstrap_interval(estimates, num_bootstrap, confidence, seed)

    return PassAtK(
        ks=sorted_ks,
        mean=tuple(float(x) for x in mean),
        ci_low=tuple(float(x) for x in low),
        ci_high=tuple(float(x) for x in high),
        num_tasks=num_tasks,
        samples_per_task=n,
        confidence=float(confidence),
        num_bootstrap=int(num_bootstrap),
        per_task=per_task,
    )


def _estimates(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> np.ndarray:
    """(T, K) per-task Pass@k estimates of T (n, c) pairs; each distinct (n, c) is evaluated once."""
    distinct = {pair: [pass_at_k(pair[0], pair[1], k) for k in ks] for pair in set(counts)}
    return np.array([distinct[pair] for pair in counts], dtype=np.float64).reshape(len(counts), len(ks))


def _bootstrap_interval(
    estimates: np.ndarray, num_bootstrap: int, confidence: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval (two (K,) arrays) of the column means of ``estimates`` (T, K),
    resampling its rows (tasks) with replacement; the same resampled rows serve every column."""
    num_tasks = estimates.shape[0]
    mean = estimates.mean(axis=0)
    # Resample task indices (B, T); count how often each task is drawn in each resample (B, T),
    # so the (B, K) resampled means are one matrix product instead of a (B, T, K) gather.
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, num_tasks, size=(num_bootstrap, num_tasks))
    rows = np.arange(num_bootstrap)[:, None] * num_tasks
    draws = np.bincount((rows + indices).ravel(), minlength=num_bootstrap * num_tasks)
    boot_means = draws.reshape(num_bootstrap, num_tasks).astype(np.float64) @ estimates / num_tasks
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot_means, [tail, 1.0 - tail], axis=0)
    # Summation order differs between the mean and the resampled means; keep round-off from
    # pushing a degenerate interval (e.g. a single task) off the point estimate.
    return np.minimum(low, mean), np.maximum(high, mean)


@dataclass(frozen=True)
class PairedDifference:
    """Pass@k of run B minus Pass@k of run A on the same tasks, with a paired bootstrap interval.

    Attributes:
        ks: the k values both runs report (increasing); the sequences below have one entry per k.
        difference: mean over tasks of (B's estimate - A's estimate), a fraction in [-1, 1].
        ci_low: lower end of the paired bootstrap interval of ``difference``.
        ci_high: upper end.
        num_tasks: tasks compared (both runs must have evaluated exactly these).
        confidence: coverage of the interval.
    """

    ks: tuple[int, ...]
    difference: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    num_tasks: int
    confidence: float


def paired_difference(
    a: PassAtK, b: PassAtK, num_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> PairedDifference:
    """B minus A, task by task: the interval resamples tasks and takes both runs' estimates of each
    drawn task, so the variation *between* tasks (large here: some tasks are always solved, some
    never) cancels, and it is much tighter than comparing two unpaired intervals.

    Raises:
        ValueError: the runs evaluated different task sets, or share no k.
    """
    if set(a.per_task) != set(b.per_task):
        only_a, only_b = sorted(set(a.per_task) - set(b.per_task)), sorted(set(b.per_task) - set(a.per_task))
        raise ValueError(f"the runs evaluated different tasks (only in A: {only_a[:3]}, only in B: {only_b[:3]})")
    ks = tuple(sorted(set(a.ks) & set(b.ks)))
    if not ks:
        raise ValueError(f"the runs share no k (A: {a.ks}, B: {b.ks})")
    tasks = sorted(a.per_task)
    diffs = _estimates([b.per_task[t] for t in tasks], ks) - _estimates([a.per_task[t] for t in tasks], ks)  # (T, K)
    low, high = _bootstrap_interval(diffs, num_bootstrap, confidence, seed)
    return PairedDifference(
        ks=ks,
        difference=tuple(float(x) for x in diffs.mean(axis=0)),
        ci_low=tuple(float(x) for x in low),
        ci_high=tuple(float(x) for x in high),
        num_tasks=len(tasks),
        confidence=float(confidence),
    )

