"""Pass@k of several finished evaluations side by side: one markdown table and one plot.

    .venv/bin/python bench/compare_passk.py OUT.png base=/tmp/b/eval-base/metrics.json grpo=/tmp/b/grpo-eval/metrics.json

Each ``LABEL=PATH`` is a ``metrics.json`` written by ``leafe eval`` or ``leafe run``. The runs
must share their test tasks (checked) for the comparison to mean anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.eval.passk import PassAtK  # noqa: E402
from leafe.eval.report import plot_pass_at_k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plot", type=Path)
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/metrics.json")
    parser.add_argument("--title", default="Pass@k on the same test tasks")
    args = parser.parse_args()
    curves: dict[str, PassAtK] = {}
    for item in args.runs:
        label, _, path = item.partition("=")
        if not path:
            parser.error(f"{item!r}: expected LABEL=path/to/metrics.json")
        curves[label] = PassAtK.from_dict(json.loads(Path(path).read_text()))
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
    print(f"plot: {plot_pass_at_k(curves, args.plot, args.title)}")


if __name__ == "__main__":
    main()
