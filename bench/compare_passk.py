"""Pass@k of several finished evaluations side by side: the tables of ``leafe compare``, one plot.

    .venv/bin/python bench/compare_passk.py OUT.png base=/tmp/b/eval-base/metrics.json grpo=/tmp/b/grpo-eval/metrics.json

Kept for the commands recorded in docs/BENCHMARKS.md; ``leafe compare [LABEL=]PATH ... --out DIR``
does the same and also takes run directories. Each ``LABEL=PATH`` is a ``metrics.json`` written
by ``leafe eval`` or ``leafe run``; the runs must share their test tasks (checked). Prints the
markdown (Pass@k, differences from the first run with paired bootstrap intervals, test-time
cost) and writes the plot to OUT.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.eval.compare import comparison, find_evaluations  # noqa: E402
from leafe.eval.report import plot_pass_at_k  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plot", type=Path)
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/metrics.json")
    parser.add_argument("--title", default="Pass@k on the same test tasks")
    args = parser.parse_args()
    evaluations = [e for item in args.runs for e in find_evaluations(item)]
    markdown, _ = comparison(evaluations, args.title)
    print(markdown)
    print(f"plot: {plot_pass_at_k({e.label: e.curve for e in evaluations}, args.plot, args.title)}")


if __name__ == "__main__":
    main()
