"""Two versions of the seeded sampler (``leafe/policy/sampling.py``), timed call by call in ONE run.

    .venv/bin/python bench/paired_sampling.py --old 92abdcd -- --history-window 8

Plays the rollout workload of ``bench/engine_throughput.py`` (its arguments after ``--``; the
native backend) once. Every time the engine samples (:func:`leafe.policy.speculative.verify_drafts`
calls ``sample_next``), both versions' ``sample_next`` run on the same logits, each from the same
generator states, alternating which goes first, so both see the same machine and the same heap
within milliseconds (the sampler's cost depends on whether its buffers need fresh memory). The
current version's tokens are the ones used. Prints the sums of both versions' times, their ratio,
the rows sampled and how many tokens the two versions picked differently.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import leafe.policy.speculative as speculative  # noqa: E402
from paired_forward import load_old  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision of leafe/policy/sampling.py to compare with")
    parser.add_argument("workload", nargs="*", help="arguments for bench/engine_throughput.py (after --)")
    args = parser.parse_args()
    if any(arg.startswith("--backends") for arg in args.workload):
        parser.error("the workload runs the native backend; do not pass --backends")
    times: dict[str, list[float]] = {"old": [], "new": []}
    counts = {"rows": 0, "different": 0}
    new_sample = speculative.sample_next

    with tempfile.TemporaryDirectory() as directory:
        old = load_old(args.old, Path(directory), "leafe/policy/sampling.py")

        def paired(logits, generators, temperature, top_p):
            states = [g.get_state() for g in generators]
            picked = {}
            order = ("old", "new") if len(times["old"]) % 2 == 0 else ("new", "old")
            for which in order:
                for g, state in zip(generators, states):
                    g.set_state(state)
                sample = old.sample_next if which == "old" else new_sample
                start = time.perf_counter()
                picked[which] = sample(logits, generators, temperature, top_p)
                times[which].append(time.perf_counter() - start)
            counts["rows"] += logits.shape[0]
            counts["different"] += int((picked["old"] != picked["new"]).sum())
            return picked["new"]  # both drew one uniform per row: the generators are where they would be

        speculative.sample_next = paired
        sys.argv = [str(ROOT / "bench/engine_throughput.py"), "--backends", "native", *args.workload]
        runpy.run_path(sys.argv[0], run_name="__main__")

    summary = {
        "old_revision": args.old,
        "calls": len(times["old"]),
        **counts,
        "old_seconds": sum(times["old"]),
        "new_seconds": sum(times["new"]),
        "ratio_of_sums": sum(times["new"]) / max(sum(times["old"]), 1e-12),
    }
    print(f"\n[paired sampling] {json.dumps(summary, indent=1)}")


if __name__ == "__main__":
    main()
