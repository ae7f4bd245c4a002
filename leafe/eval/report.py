"""Writing Pass@k results: ``metrics.json``, a PNG curve, ``summary.md`` and a terminal table.

Every writer takes ``curves``, a mapping from a display name (a model, a checkpoint) to its
:class:`~leafe.eval.passk.PassAtK`; one curve is a plain report, several are a comparison
(e.g. base vs trained model). The numbers are the unbiased Pass@k estimator of Chen et al.
(2021), "Evaluating Large Language Models Trained on Code", averaged over tasks, with a
percentile bootstrap confidence interval over tasks (see :mod:`leafe.eval.passk`).

Files are written atomically (temporary file in the same directory, then ``os.replace``), so a
crashed or concurrent run never leaves a half-written report behind.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from leafe.eval.passk import PassAtK
from leafe.runs import write_atomic

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.json"  # what `leafe run` writes at the top of its directory
PLOT_FILE = "passk.png"
SUMMARY_FILE = "summary.md"


def _require_curves(curves: Mapping[str, PassAtK]) -> None:
    if not curves:
        raise ValueError("curves is empty: need at least one Pass@k result")


def _all_ks(curves: Mapping[str, PassAtK]) -> list[int]:
    return sorted({k for result in curves.values() for k in result.ks})


def _cells(result: PassAtK, k: int) -> tuple[str, str]:
    """(Pass@k in %, "[low, high]" in %) for one k; dashes when ``result`` lacks that k."""
    if k not in result.ks:
        return "—", "—"
    i = result.ks.index(k)
    return (
        f"{100 * result.mean[i]:.1f}",
        f"[{100 * result.ci_low[i]:.1f}, {100 * result.ci_high[i]:.1f}]",
    )


def _ci_label(result: PassAtK) -> str:
    return f"{result.confidence:.0%} CI"


def plot_pass_at_k(curves: Mapping[str, PassAtK], path: str | os.PathLike[str], title: str) -> Path:
    """Plot Pass@k (%) against k (log2 axis, ticks at the ks) and save it as a PNG.

    Args:
        curves: name -> result; each becomes a line with markers over its K ks and a shaded
            band between ``ci_low`` and ``ci_high``.
        path: where the PNG goes (parent directories are created).
        title: figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    _require_curves(curves)
    path = Path(path)
    ks = _all_ks(curves)

    # A bare Figure on the Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles = []
    for name, result in curves.items():
        mean = [100 * x for x in result.mean]
        low = [100 * x for x in result.ci_low]
        high = [100 * x for x in result.ci_high]
        (line,) = ax.plot(result.ks, mean, marker="o", linewidth=2, markersize=6)
        band = ax.fill_between(result.ks, low, high, color=line.get_color(), alpha=0.18, lw=0)
        handles.append(((band, line), name))

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlim(ks[0] / 2**0.3, ks[-1] * 2**0.3)
    ax.set_ylim(-3, 103)  # headroom so 0% and 100% points do not sit on the frame
    ax.yaxis.set_major_locator(FixedLocator(range(0, 101, 20)))
    ax.set_xlabel("k (attempts per task)")
    ax.set_ylabel("Pass@k (%)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    bands = ", ".join(sorted({_ci_label(result) for result in curves.values()}))
    ax.legend(*zip(*handles), loc="best", frameon=False, title=f"shaded: {bands}")

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_atomic(path, buffer.getvalue())
    return path


def _detail(value: object) -> str:
    """A detail value for the bullet list; a mapping becomes ``key=value, ...``."""
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={item}" for key, item in value.items())
    return str(value)


def md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(curves: Mapping[str, PassAtK]) -> str:
    """Markdown table with one row per k (union of all curves' ks).

    One curve gives the columns ``k | Pass@k (%) | 95% CI``; several curves give two columns
    per curve, prefixed with its name. Values are percentages with one decimal; a curve
    without some k shows a dash there.
    """
    _require_curves(curves)
    header = ["k"]
    for name, result in curves.items():
        prefix = "" if len(curves) == 1 else f"{md_escape(name)} "
        header += [f"{prefix}Pass@k (%)", f"{prefix}{_ci_label(result)}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for k in _all_ks(curves):
        row = [str(k)]
        for result in curves.values():
            row += _cells(result, k)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    result: PassAtK,
    out_dir: str | os.PathLike[str],
    title: str,
    details: Mapping[str, object],
    name: str | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``passk.png`` and ``summary.md`` into ``out_dir``.

    Args:
        result: the Pass@k result to report.
        out_dir: output directory (created if missing).
        title: report and plot title.
        details: run facts shown as a bullet list and stored in ``metrics.json`` under
            ``"details"`` (e.g. model, env, n, tasks, max steps, seed, mean steps); values
            that are not JSON types are stored as their ``str``.
        name: the curve's label in the plot and table (default: ``title``).

    Returns:
        ``{"metrics": ..., "plot": ..., "summary": ...}``, the three written paths.
        ``metrics.json`` holds ``result.to_dict()`` plus ``"title"`` and ``"details"``, so
        ``PassAtK.from_dict(json.load(f))`` reads it back.
    """
    out = Path(out_dir)
    metrics = {**result.to_dict(), "title": title, "details": dict(details)}
    metrics_path = out / METRICS_FILE
    write_atomic(metrics_path, (json.dumps(metrics, indent=2, default=str) + "\n").encode())

    curve = {name or title: result}
    plot_path = plot_pass_at_k(curve, out / PLOT_FILE, title)

    detail_lines = [f"- **{key}**: {_detail(value)}" for key, value in details.items()]
    summary = "\n".join(
        [
            f"# {title}",
            "",
            f"Unbiased Pass@k (Chen et al., 2021) averaged over {result.num_tasks} tasks with "
            f"n={result.samples_per_task} samples each; {_ci_label(result)} from a percentile "
            f"bootstrap over tasks ({result.num_bootstrap} resamples).",
            "",
            markdown_table(curve),
            *(detail_lines + [""] if detail_lines else []),
            f"![Pass@k curve]({PLOT_FILE})",
            "",
        ]
    )
    summary_path = out / SUMMARY_FILE
    write_atomic(summary_path, summary.encode())
    return {"metrics": metrics_path, "plot": plot_path, "summary": summary_path}


def format_table(curves: Mapping[str, PassAtK]) -> Table:
    """Rich table: a ``k`` column, then one ``Pass@k (%) [CI]`` column per curve; K rows."""
    _require_curves(curves)
    table = Table(title="Pass@k", title_style="bold")
    table.add_column("k", justify="right", style="bold")
    for name, result in curves.items():
        table.add_column(f"{escape(name)}\nPass@k (%) [{_ci_label(result)}]", justify="right")
    for k in _all_ks(curves):
        row = [str(k)]
        for result in curves.values():
            value, interval = _cells(result, k)
            row.append(value if value == "—" else f"{value} {interval}")
        table.add_row(*row)
    return table


def print_table(curves: Mapping[str, PassAtK], console: Console | None = None) -> None:
    """Print :func:`format_table` on ``console`` (a fresh stdout :class:`Console` by default)."""
    (console or Console()).print(format_table(curves))
