"""Pass@k of several finished evaluations side by side: one markdown table and one plot.

    .venv/bin/python bench/compare_passk.py OUT.png base=/tmp/b/eval-base/metrics.json grpo=/tmp/b/grpo-eval/metrics.json

Each ``LABEL=PATH`` is a ``metrics.json`` written by ``leafe eval`` or ``leafe run``. The runs
must share their test tasks (checked) for the comparison to mean anything. A second table gives
each run's difference from the first one with a paired bootstrap interval (the same resampled
tasks for both runs), a third what one sample cost at test time (a Reflexion sample is a chain of
attempts).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.eval.passk import PassAtK, paired_difference  # noqa: E402
from leafe.eval.report import plot_pass_at_k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plot", type=Path)
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/metrics.json")
    parser.add_argument("--title", default="Pass@k on the same test tasks")
    args = parser.parse_args()
    records: dict[str, dict] = {}  # label -> the metrics.json contents
    for item in args.runs:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"{item!r}: expected LABEL=path/to/metrics.json")
        records[label] = json.loads(Path(path).read_text())
    curves = {label: PassAtK.from_dict(record) for label, record in records.items()}
    task_sets = {label: set(curve.per_task) for label, curve in curves.items()}
    first = next(iter(task_sets.values()))
    if any(tasks != first for tasks in task_sets.values()):
        sys.exit(f"the runs do not share their test tasks: {({k: len(v) for k, v in task_sets.items()})}")
    ks = sorted(set.intersection(*(set(curve.ks) for curve in curves.values())))
    print("| model | " + " | ".join(f"Pass@{k} %" for k in ks) + " |")
    print("|---|" + "---:|" * len(ks))
    for label, curve in curves.items():
        cells = [f"{100 * curve.mean[i]:.1f} [{100 * curve.ci_low[i]:.1f}, {100 * curve.ci_high[i]:.1f}]" for i, k in enumerate(curve.ks) if k in ks]
        print(f"| {label} | " + " | ".join(cells) + " |")
    reference = next(iter(curves))
    print()
    print(f"Difference from {reference}, percentage points [95% paired bootstrap interval over tasks]:")
    print()
    print("| model | " + " | ".join(f"Pass@{k}" for k in ks) + " |")
    print("|---|" + "---:|" * len(ks))
    for label, curve in list(curves.items())[1:]:
        d = paired_difference(curves[reference], curve)
        cells = [f"{100 * d.difference[i]:+.1f} [{100 * d.ci_low[i]:+.1f}, {100 * d.ci_high[i]:+.1f}]" for i, k in enumerate(d.ks) if k in ks]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print("| model | success rate per sample % | env steps per sample | model tokens per sample |")
    print("|---|---:|---:|---:|")
    for label, record in records.items():
        details = record.get("details", {})
        steps, tokens = test_time_cost(details)
        rate = details.get("success_rate")
        print(f"| {label} | {'?' if rate is None else f'{100 * rate:.1f}'} | {steps} | {tokens} |")
    print(f"plot: {plot_pass_at_k(curves, args.plot, args.title)}")


def test_time_cost(details: dict) -> tuple[str, str]:
    """Mean env steps and model tokens one sample cost at test time: an episode of ``leafe eval``,
    a whole chain of attempts (reflections included) of ``eval.method: reflexion``."""
    steps = details.get("mean_env_steps_per_sample", details.get("mean_steps"))
    tokens = details.get("mean_model_tokens_per_sample", details.get("mean_model_tokens"))
    return ("?" if steps is None else f"{steps:.2f}", "?" if tokens is None else f"{tokens:,.0f}")


if __name__ == "__main__":
    main()
