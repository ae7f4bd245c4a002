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
from leafe.eval.passk import PassAtK, paired_difference
from leafe.eval.report import METRICS_FILE, markdown_table, plot_pass_at_k
from leafe.runs import recorded_commands, write_atomic

REPORT_FILE = "report.json"  # what `leafe run` writes at the top of its directory


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
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{item}: {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{item}: cannot read {path} ({error})") from None


def _from_metrics(label: str, path: Path, item: str) -> Evaluation:
    record = _read_json(path, item)
    try:
        curve = PassAtK.from_dict(record)
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{item}: {path} is not a metrics.json written by leafe eval") from None
    return Evaluation(label, path, curve, record.get("details", {}))


def _from_pipeline(prefix: str, run_dir: Path, item: str) -> list[Evaluation]:
    """A `leafe run` directory's curves, labelled as its report labels them (base / init, then
    one per round); the facts of each come from its stage's metrics.json where it has one (a
    round whose SFT was skipped reuses the earlier evaluation and has none)."""
    report_path = run_dir / REPORT_FILE
    if not report_path.is_file():
        raise ConfigError(
            f"{item}: {run_dir} is a `leafe run` directory without {REPORT_FILE} (not finished); "
            f"compare its finished evaluations instead, e.g. {run_dir / 'eval-base'}"
        )
    curves = _read_json(report_path, item).get("pass_at_k", {})
    rounds = [f"round-{index}/eval" for index in range(1, len(curves) + 1)]
    folders = (["eval-base"] if len(curves) > 0 and next(iter(curves)) in ("base", "init") else []) + rounds
    evaluations = []
    for (name, data), folder in zip(curves.items(), folders):
        metrics = run_dir / folder / METRICS_FILE
        details = _read_json(metrics, item).get("details", {}) if metrics.is_file() else {}
        evaluations.append(Evaluation(f"{prefix}: {name}", report_path, PassAtK.from_dict(data), details))
    return evaluations


def find_evaluations(item: str) -> list[Evaluation]:
    """The curves one ``[LABEL=]PATH`` argument names (see the module docstring).

    Raises:
        FileNotFoundError: PATH does not exist.
        ConfigError: PATH is a directory with no evaluation, or a file leafe did not write.
    """
    label, sep, path_text = item.partition("=")
    if not sep or Path(item).exists():  # no label (a path may hold "=" itself)
        label, path_text = "", item
    path = Path(path_text)
    if not path.exists():
        raise FileNotFoundError(f"{item}: {path} does not exist")
    if path.is_file():
        return [_from_metrics(label or path.parent.name, path, item)]
    if "run" in recorded_commands(path) or (path / REPORT_FILE).is_file():
        return _from_pipeline(label or path.name, path, item)
    if (path / METRICS_FILE).is_file():
        return [_from_metrics(label or path.name, path / METRICS_FILE, item)]
    raise ConfigError(f"{item}: {path} holds no {METRICS_FILE} or {REPORT_FILE} (is the evaluation finished?)")


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


def comparison(evaluations: Sequence[Evaluation], title: str) -> tuple[str, dict[str, Any]]:
    """(markdown, JSON-ready record) of the comparison; the first evaluation is the reference.

    Raises:
        ConfigError: fewer than one evaluation, two with the same label, or evaluations of
            different test tasks.
    """
    if not evaluations:
        raise ConfigError("nothing to compare: name at least one metrics.json or run directory")
    labels = [e.label for e in evaluations]
    if len(set(labels)) < len(labels):
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        raise ConfigError(f"two curves are labelled {repeated[0]!r}: give them labels (LABEL=PATH)")
    reference, *others = evaluations
    for other in others:
        if set(other.curve.per_task) != set(reference.curve.per_task):
            raise ConfigError(
                f"{other.label} ({other.source}) evaluated other test tasks than {reference.label} "
                f"({reference.source}): {other.curve.num_tasks} against {reference.curve.num_tasks} tasks, "
                "not all shared; a comparison needs the same tasks"
            )
    curves = {e.label: e.curve for e in evaluations}
    first = reference.curve
    lines = [
        f"# {title}",
        "",
        f"Pass@k on the same {first.num_tasks} test tasks; unbiased estimator, "
        f"{first.confidence:.0%} bootstrap intervals over tasks.",
        "",
        markdown_table(curves),
    ]
    differences: dict[str, Any] = {}
    if others:
        try:
            table = {other.label: paired_difference(reference.curve, other.curve, confidence=first.confidence) for other in others}
        except ValueError as error:  # no k in common
            raise ConfigError(f"cannot compare with {reference.label}: {error}") from None
        ks = sorted({k for d in table.values() for k in d.ks})
        lines += [
            f"Difference from {reference.label}, percentage points [paired {first.confidence:.0%} bootstrap interval over tasks]:",
            "",
            "| k | " + " | ".join(other.label for other in others) + " |",
            "|" + "---:|" * (len(others) + 1),
        ]
        for k in ks:
            cells = []
            for d in table.values():
                i = d.ks.index(k) if k in d.ks else None
                cells.append("—" if i is None else f"{100 * d.difference[i]:+.1f} [{100 * d.ci_low[i]:+.1f}, {100 * d.ci_high[i]:+.1f}]")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
        differences = {label: {"ks": list(d.ks), "difference": list(d.difference), "ci_low": list(d.ci_low), "ci_high": list(d.ci_high)} for label, d in table.items()}
    lines += [
        "What one test-time sample cost (a Reflexion sample is a chain of attempts):",
        "",
        "| curve | success rate per sample % | env steps per sample | model tokens per sample |",
        "|---|---:|---:|---:|",
        *(f"| {e.label} | " + " | ".join(_cost(e.details)) + " |" for e in evaluations),
        "",
        "![Pass@k](passk.png)",
        "",
    ]
    record = {
        "title": title,
        "curves": {e.label: {"source": str(e.source), **e.curve.to_dict()} for e in evaluations},
        "difference_from": reference.label,
        "differences": differences,
    }
    return "\n".join(lines), record


def write_comparison(evaluations: Sequence[Evaluation], out_dir: str | os.PathLike[str], title: str) -> dict[str, Path]:
    """Write ``compare.md``, ``compare.json`` and ``passk.png`` into ``out_dir``; return the paths.

    Raises:
        ConfigError: as :func:`comparison`.
    """
    markdown, record = comparison(evaluations, title)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "compare.md", "json": out / "compare.json"}
    write_atomic(paths["markdown"], markdown)
    write_atomic(paths["json"], json.dumps(record, indent=2) + "\n")
    paths["plot"] = plot_pass_at_k({e.label: e.curve for e in evaluations}, out / "passk.png", title)
    return paths
