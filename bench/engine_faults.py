"""Where the native engine's page faults and memory-copy time go, on the throughput workload.

    .venv/bin/python bench/engine_faults.py --backends native --history-window 8

Runs ``bench/engine_throughput.py`` with the given arguments in this process, with the engine's
memory operations wrapped: key/value slot reservation, copies into and out of the slots (prefix
loads, prefix-cache inserts, slot moves), forward passes, prompt-only passes and the LM head. After
the run it prints, per operation, the calls, the seconds spent in them and the minor page faults
taken during them (``getrusage``; faults of the whole process, so threads count too). On a VM a
fault on fresh memory is expensive (docs/BENCHMARKS.md, session 21): this is how those costs were
attributed.
"""

from __future__ import annotations

import atexit
import resource
import runpy
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leafe.policy.kv_slots import KVSlots  # noqa: E402
from leafe.policy.native import NativePolicy  # noqa: E402
from leafe.policy.native_forward import LlamaFamilyForward  # noqa: E402

# operation -> [calls, seconds, minor faults]
TOTALS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def wrap(owner: type, name: str, label: str) -> None:
    """Replace ``owner.name`` by a version that adds its calls, time and faults to ``TOTALS[label]``."""
    inner: Callable = getattr(owner, name)

    def counted(*args, **kwargs):
        faults, start = _faults(), time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            total = TOTALS[label]
            total[0] += 1
            total[1] += time.perf_counter() - start
            total[2] += _faults() - faults

    setattr(owner, name, counted)


def report() -> None:
    print(f"\nminor page faults, whole process: {_faults():,}")
    print(f"{'operation':<24}{'calls':>8}{'seconds':>10}{'faults':>12}")
    for label, (calls, seconds, faults) in TOTALS.items():
        print(f"{label:<24}{calls:>8}{seconds:>10.1f}{faults:>12,}")


def main() -> None:
    for owner, name, label in [
        (KVSlots, "reserve", "slots.reserve"),
        (KVSlots, "copy_out", "slots.copy_out"),
        (KVSlots, "load", "slots.load"),
        (KVSlots, "move", "slots.move"),
        (NativePolicy, "_run_prompts", "prompt-only passes"),
        (LlamaFamilyForward, "forward", "forward (all passes)"),
        (LlamaFamilyForward, "logits", "LM head"),
    ]:
        wrap(owner, name, label)
    atexit.register(report)
    sys.argv = [str(ROOT / "bench" / "engine_throughput.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
