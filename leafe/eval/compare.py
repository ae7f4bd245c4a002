"""``leafe compare``: finished evaluations side by side, with paired differences and one plot.

    leafe compare runs/sokoban-quickstart GRPO=runs/grpo-eval runs/ee-eval/metrics.json --out runs/compare

Each argument is ``[LABEL=]PATH``, where PATH is a ``metrics.json`` (``leafe eval``), a ``leafe
eval`` run directory, or a ``leafe run`` directory (its base evaluation and every round's, from
``report.json``). The evaluations must share their test tasks, so every difference is paired:
the same resampled tasks for both curves (:func:`~leafe.eval.passk.paired_difference`).

Writes ``OUT/compare.md`` (three tables: Pass@k with intervals, each curve minus the first with
a paired interval, and what one test-time sample cost), ``OUT/compare.json`` and
``OUT/passk.png`` (every curve with its band).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leafe.config import ConfigError
from leafe.eval.passk import PairedDifference, PassAtK, paired_difference
from leafe.eval.report import METRICS_FILE, REPORT_FILE, markdown_table, md_escape, plot_pass_at_k
from leafe.runs import META_FILE, make_output_dir, recorded_commands, write_atomic

# Facts of metrics.json that must agree for two curves to be over the same tasks (task ids alone
# do not say, e.g., how many turns an episode had).
SAME_SETTING = ("env", "split", "max_steps")


@dataclass(frozen=True)
class Evaluation:
    """One curve to compare: its label, where it came from, and the run's facts (``details`` of
    ``metrics.json``: mean steps and tokens per sample, success rate; empty when unknown)."""

    label: str
    source: Path
    curve: PassAtK
    details: Mapping[str, Any] = field(default_factory=dict)


def _read_json(path: Path, item: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{item}: {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{item}: cannot read {path} ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{item}: {path} is not a JSON object, so leafe did not write it")
    return data


def _curve(data: Any, path: Path, item: str) -> PassAtK:
    try:
        return PassAtK.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ConfigError(f"{item}: {path} holds no Pass@k result written by leafe") from None


def _field(record: dict[str, Any], key: str, path: Path, item: str) -> dict[str, Any]:
    """``record[key]``, a JSON object ({} when absent).

    Raises:
        ConfigError: it is something else (names the file and the key).
    """
    value = record.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{item}: {path}: {key!r} is not an object, so leafe did not write this file")
    return value


def _from_metrics(label: str, path: Path, item: str) -> Evaluation:
    record = _read_json(path, item)
    return Evaluation(label, path, _curve(record, path, item), _field(record, "details", path, item))


def _from_pipeline(prefix: str, run_dir: Path, item: str) -> list[Evaluation]:
    """A `leafe run` directory's curves, labelled as its report labels them; the facts of each
    come from the metrics.json of the folder ``report.json`` names for it (``eval_dirs``)."""
    report_path = run_dir / REPORT_FILE
    if not report_path.is_file():
        raise ConfigError(
            f"{item}: {run_dir} is a `leafe run` directory without {REPORT_FILE} (not finished); "
            f"compare its finished evaluations instead, e.g. {run_dir / 'eval-base'}"
        )
    report = _read_json(report_path, item)
    folders = _field(report, "eval_dirs", report_path, item)  # absent in reports written before it was recorded
    evaluations = []
    for name, data in _field(report, "pass_at_k", report_path, item).items():
        metrics = run_dir / str(folders[name]) / METRICS_FILE if name in folders else None
        details = _field(_read_json(metrics, item), "details", metrics, item) if metrics and metrics.is_file() else {}
        evaluations.append(Evaluation(f"{prefix}: {name}", report_path, _curve(data, report_path, item), details))
    return evaluations


def find_evaluations(item: str) -> list[Evaluation]:
    """The curves one ``[LABEL=]PATH`` argument names (see the module docstring).

    Raises:
        FileNotFoundError: PATH does not exist.
        ConfigError: PATH is empty, a directory with no evaluation, or a file leafe did not write.
    """
    label, sep, path_text = item.partition("=")
    if not sep or Path(item).exists():  # no label (a path may hold "=" itself)
        label, path_text = "", item
    if not path_text:
        raise ConfigError(f"{item}: no path after the label (LABEL=PATH)")
    path = Path(path_text)
    if not path.exists():
        raise FileNotFoundError(f"{item}: {path} does not exist")
    resolved = path.resolve()  # "." and bare file names have a real name too
    if path.is_file():
        return [_from_metrics(label or resolved.parent.name, path, item)]
    if "run" in recorded_commands(path) or (path / REPORT_FILE).is_file():
        return _from_pipeline(label or resolved.name, path, item)
    if (path / METRICS_FILE).is_file():
        return [_from_metrics(label or resolved.name, path / METRICS_FILE, item)]
    raise ConfigError(f"{item}: {path} holds no {METRICS_FILE} or {REPORT_FILE} (is the evaluation finished?)")


def _check(evaluations: Sequence[Evaluation]) -> None:
    """Raises ConfigError unless there is something to compare, every label is distinct, and every
    curve was measured in the reference's setting (where both record it)."""
    if not evaluations:
        raise ConfigError("nothing to compare: name at least one metrics.json or run directory")
    labels = [e.label for e in evaluations]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"two curves are labelled {repeated[0]!r}: give them labels (LABEL=PATH)")
    reference = evaluations[0]
    for other in evaluations[1:]:
        for key in SAME_SETTING:
            if key in reference.details and key in other.details and reference.details[key] != other.details[key]:
                raise ConfigError(
                    f"{other.label} ({other.source}) has {key}={other.details[key]!r} but {reference.label} "
                    f"({reference.source}) has {reference.details[key]!r}: not the same test setting"
                )


def _differences(evaluations: Sequence[Evaluation]) -> dict[str, PairedDifference]:
    """Each curve after the first minus the first, task by task (paired bootstrap)."""
    reference, *others = evaluations
    first = reference.curve
    table = {}
    for other in others:
        try:
            table[other.label] = paired_difference(first, other.curve, first.num_bootstrap, first.confidence)
        except ValueError as error:  # other tasks, or no k in common
            raise ConfigError(f"{other.label} ({other.source}) against {reference.label} ({reference.source}): {error}") from None
    return table


def _difference_table(reference: str, table: Mapping[str, PairedDifference], confidence: float) -> list[str]:
    ks = sorted({k for d in table.values() for k in d.ks})
    lines = [
        f"Difference from {md_escape(reference)}, percentage points [paired {confidence:.0%} bootstrap interval over tasks]:",
        "",
        "| k | " + " | ".join(md_escape(label) for label in table) + " |",
        "|" + "---:|" * (len(table) + 1),
    ]
    for k in ks:
        cells = []
        for d in table.values():
            if k in d.ks:
                i = d.ks.index(k)
                cells.append(f"{100 * d.difference[i]:+.1f} [{100 * d.ci_low[i]:+.1f}, {100 * d.ci_high[i]:+.1f}]")
            else:
                cells.append("—")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines + [""]


def _cost(details: Mapping[str, Any]) -> tuple[str, str, str]:
    """(success rate %, env steps, model tokens) of one test-time sample: an episode of ``leafe
    eval``, or a whole chain of attempts (reflections included) of ``eval.method: reflexion``."""
    rate = details.get("success_rate")
    steps = details.get("mean_env_steps_per_sample", details.get("mean_steps"))
    tokens = details.get("mean_model_tokens_per_sample", details.get("mean_model_tokens"))
    return (
        "?" if rate is None else f"{100 * rate:.1f}",
        "?" if steps is None else f"{steps:.2f}",
        "?" if tokens is None else f"{tokens:,.0f}",
    )


def _cost_table(evaluations: Sequence[Evaluation]) -> list[str]:
    return [
        "What one test-time sample cost (a Reflexion sample is a chain of attempts):",
        "",
        "| curve | success rate per sample % | env steps per sample | model tokens per sample |",
        "|---|---:|---:|---:|",
        *(f"| {md_escape(e.label)} | " + " | ".join(_cost(e.details)) + " |" for e in evaluations),
        "",
    ]


def comparison(evaluations: Sequence[Evaluation], title: str) -> tuple[str, dict[str, Any]]:
    """(markdown without the plot, JSON-ready record) of the comparison; the first evaluation is
    the reference of the differences.

    Raises:
        ConfigError: no evaluation, two with the same label, or a curve of other test tasks, of
            another setting (:data:`SAME_SETTING`) or with no k in common with the first.
    """
    _check(evaluations)
    reference = evaluations[0]
    first = reference.curve
    differences = _differences(evaluations)
    lines = [
        f"# {title}",
        "",
        f"Pass@k on the same {first.num_tasks} test tasks; unbiased estimator, "
        f"{first.confidence:.0%} bootstrap intervals over tasks.",
        "",
        markdown_table({e.label: e.curve for e in evaluations}),
        *(_difference_table(reference.label, differences, first.confidence) if differences else []),
        *_cost_table(evaluations),
    ]
    record = {
        "title": title,
        "curves": {e.label: {"source": str(e.source), **e.curve.to_dict()} for e in evaluations},
        "difference_from": reference.label,
        "differences": {
            label: {"ks": list(d.ks), "difference": list(d.difference), "ci_low": list(d.ci_low), "ci_high": list(d.ci_high)}
            for label, d in differences.items()
        },
    }
    return "\n".join(lines), record


def write_comparison(evaluations: Sequence[Evaluation], out_dir: str | os.PathLike[str], title: str) -> dict[str, Path]:
    """Write ``compare.md``, ``compare.json`` and ``passk.png`` into ``out_dir``; return the paths.

    Raises:
        ConfigError: as :func:`comparison`, or ``out_dir`` is a run directory (its plot would be
            replaced).
    """
    out = Path(out_dir)
    if (out / META_FILE).exists():
        raise ConfigError(f"--out: {out} is a run directory (its passk.png would be replaced); choose another folder")
    markdown, record = comparison(evaluations, title)
    make_output_dir(out, "--out")
    paths = {"markdown": out / "compare.md", "json": out / "compare.json"}
    write_atomic(paths["markdown"], markdown + "![Pass@k](passk.png)\n")
    write_atomic(paths["json"], json.dumps(record, indent=2) + "\n")
    paths["plot"] = plot_pass_at_k({e.label: e.curve for e in evaluations}, out / "passk.png", title)
    return paths
