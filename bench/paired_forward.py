"""Two versions of the native engine's forward pass, timed pass by pass in ONE process.

    .venv/bin/python bench/paired_forward.py --old HEAD~1                        # window 8 (default)
    .venv/bin/python bench/paired_forward.py --old d0de5c7 -- --history-window 1 --tasks 4

On a shared machine, wall times of whole runs drift by 10-40% between runs minutes apart (see
docs/BENCHMARKS.md, session 26), which hides a change worth a few percent. This benchmark plays the
rollout workload of ``bench/engine_throughput.py`` (its arguments after ``--``; the native backend)
once, and runs every forward pass of the engine twice on the same inputs: with
``leafe/policy/native_forward.py`` as it was at git revision ``--old``, and as it is in this tree,
alternating which goes first. Both see the same machine state within a second, so their ratio is
robust to drift. The current version's result is the one used.

Only for changes that keep the forward pass's output bitwise the same (then the second run of a
pass writes the same keys and values as the first; the script compares every pass's hidden states
and stops at the first difference). The episodes may still differ from a plain run's: two of
five paired runs in session 26 played slightly different ones, by the rare divergence that depends
on rows' order in a batch (docs/BENCHMARKS.md), which does not bias the ratio. The old version
runs on the same object's state (weights, fused projections, packed weights, rotary table): its
attributes must be the ones it expects. Only that one file is taken from ``--old``: the modules it
imports (``native_layout``, ``native_linear``) are this tree's for both versions. Prints the sums
of both versions' times, their ratio and the median of the per-pass ratios; ``--json`` writes
every pass's times.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import leafe.policy.native_forward as current  # noqa: E402

FORWARD = "leafe/policy/native_forward.py"


def load_old(revision: str, directory: Path, file: str = FORWARD):
    """The module ``file`` (a path in the repository) of git ``revision``, imported under another name."""
    try:
        source = subprocess.run(
            ["git", "show", f"{revision}:{file}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"--old {revision!r}: git show failed: {error.stderr.strip()}") from None
    name = "old_" + Path(file).stem
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="git revision of the forward pass to compare with")
    parser.add_argument("--json", help="also write the per-pass times here")
    parser.add_argument("workload", nargs="*", help="arguments for bench/engine_throughput.py (after --)")
    args = parser.parse_args()
    if any(arg.startswith("--backends") for arg in args.workload):
        parser.error("the workload runs the native backend; do not pass --backends")
    times: dict[str, list[float]] = {"old": [], "new": []}
    new_forward = current.LlamaFamilyForward.forward

    with tempfile.TemporaryDirectory() as directory:
        old = load_old(args.old, Path(directory))

        def paired(self, *inputs, **options):
            twin = old.LlamaFamilyForward.__new__(old.LlamaFamilyForward)
            twin.__dict__ = self.__dict__  # the same weights and state, the old methods
            results = {}
            order = ("old", "new") if len(times["old"]) % 2 == 0 else ("new", "old")
            for which in order:
                start = time.perf_counter()
                if which == "old":
                    results[which] = old.LlamaFamilyForward.forward(twin, *inputs, **options)
                else:
                    results[which] = new_forward(self, *inputs, **options)
                times[which].append(time.perf_counter() - start)
            if not torch.equal(results["old"], results["new"]):
                raise SystemExit(
                    f"pass {len(times['old'])}: the two versions' hidden states differ (largest difference "
                    f"{(results['old'] - results['new']).abs().max().item():.3g}); this benchmark needs bitwise-equal passes"
                )
            return results["new"]

        current.LlamaFamilyForward.forward = paired
        sys.argv = [str(ROOT / "bench/engine_throughput.py"), "--backends", "native", *args.workload]
        runpy.run_path(sys.argv[0], run_name="__main__")

    old_times, new_times = times["old"], times["new"]
    summary = {
        "old_revision": args.old,
        "passes": len(old_times),
        "old_seconds": sum(old_times),
        "new_seconds": sum(new_times),
        "ratio_of_sums": sum(new_times) / sum(old_times),
        "median_pass_ratio": statistics.median(b / a for a, b in zip(old_times, new_times)),
    }
    print(f"\n[paired forward] {json.dumps(summary, indent=1)}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary | {"old_pass_seconds": old_times, "new_pass_seconds": new_times}))


if __name__ == "__main__":
    main()
