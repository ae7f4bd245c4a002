"""Median wall times of several forms of the same work, run in turn so they share the machine's state.

On a shared machine, times drift between runs minutes apart; interleaving the forms round by round
keeps their ratio robust to that drift (docs/BENCHMARKS.md, session 26).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable


def interleaved_medians(forms: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Run every form once per round, in order, for ``repeats`` rounds; each form's median seconds."""
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(repeats):
        for name, form in forms.items():
            start = time.perf_counter()
            form()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(bucket) for name, bucket in times.items()}


def attention_bench_args(description: str) -> argparse.Namespace:
    """The attention benches' command line (``--repeats``); exits where this PyTorch has no CPU
    flash kernel, the baseline they all time against."""
    from leafe.policy.native_forward import _CPU_FLASH

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    if _CPU_FLASH is None:
        sys.exit("this PyTorch has no CPU flash-attention kernel")
    return args
