"""Tests for the Pass@k report writers: PNG plot, metrics.json, summary.md and the rich table."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from rich.console import Console

from leafe.eval.passk import PassAtK, compute_pass_at_k
from leafe.eval.report import format_table, markdown_table, plot_pass_at_k, print_table, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def base() -> PassAtK:
    counts = {f"t{i}": (8, c) for i, c in enumerate([0, 0, 1, 2, 0, 5, 8, 0, 3, 1])}
    return compute_pass_at_k(counts, [1, 2, 4, 8], num_bootstrap=200)


@pytest.fixture(scope="module")
def trained() -> PassAtK:
    counts = {f"t{i}": (8, c) for i, c in enumerate([2, 1, 4, 6, 0, 8, 8, 3, 5, 2])}
    return compute_pass_at_k(counts, [1, 2, 4, 8], num_bootstrap=200)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _no_temp_files(directory: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in directory.iterdir())


def test_plot_writes_a_valid_png(tmp_path: Path, base: PassAtK, trained: PassAtK) -> None:
    out = plot_pass_at_k({"base": base, "trained": trained}, tmp_path / "plots" / "cmp.png", "Cmp")
    assert out == tmp_path / "plots" / "cmp.png"
    width, height = _png_size(out)
    assert 400 <= width <= 2000 and 300 <= height <= 1500
    assert 10_000 < out.stat().st_size < 1_000_000
    assert _no_temp_files(out.parent)


def test_plot_handles_a_single_k_and_extreme_values(tmp_path: Path) -> None:
    flat = compute_pass_at_k({"a": (1, 1), "b": (1, 0)}, [1], num_bootstrap=20)
    width, height = _png_size(plot_pass_at_k({"one k": flat}, tmp_path / "one.png", "One k"))
    assert width > 0 and height > 0


def test_plot_rejects_no_curves(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_pass_at_k({}, tmp_path / "none.png", "Nothing")


def test_write_report_writes_all_three_files(tmp_path: Path, base: PassAtK) -> None:
    details = {"model": "smollm2-135m", "env": "sokoban", "n": 8, "tasks": 10, "seed": 0,
               "throughput": {"tok_s": 1.5}, "out": tmp_path}
    paths = write_report(base, tmp_path / "run", "Sokoban quickstart", details)
    assert set(paths) == {"metrics", "plot", "summary"}
    assert all(path.parent == tmp_path / "run" and path.is_file() for path in paths.values())
    assert _no_temp_files(tmp_path / "run")

    metrics = json.loads(paths["metrics"].read_text())
    assert PassAtK.from_dict(metrics) == base
    assert metrics["title"] == "Sokoban quickstart"
    assert metrics["details"]["model"] == "smollm2-135m"
    assert metrics["details"]["out"] == str(tmp_path)  # non-JSON values are stored as str

    _png_size(paths["plot"])

    summary = paths["summary"].read_text()
    assert summary.startswith("# Sokoban quickstart\n")
    assert "| k | Pass@k (%) | 95% CI |" in summary
    for k, mean in zip(base.ks, base.mean):
        assert f"| {k} | {100 * mean:.1f} |" in summary
    assert "- **model**: smollm2-135m" in summary
    assert "- **env**: sokoban" in summary
    assert "- **throughput**: tok_s=1.5" in summary  # a mapping detail reads key=value
    assert metrics["details"]["throughput"] == {"tok_s": 1.5}
    assert "](passk.png)" in summary


def test_write_report_overwrites_an_earlier_report(tmp_path: Path, base: PassAtK, trained: PassAtK) -> None:
    write_report(base, tmp_path, "first", {})
    paths = write_report(trained, tmp_path, "second", {})
    assert PassAtK.from_dict(json.loads(paths["metrics"].read_text())) == trained
    assert paths["summary"].read_text().startswith("# second\n")


def test_markdown_table_compares_curves_and_marks_missing_k(base: PassAtK) -> None:
    short = compute_pass_at_k({"a": (2, 1), "b": (2, 0)}, [1, 2], num_bootstrap=20)
    table = markdown_table({"base": base, "a|b": short})
    lines = table.strip().splitlines()
    assert lines[0] == "| k | base Pass@k (%) | base 95% CI | a\\|b Pass@k (%) | a\\|b 95% CI |"
    assert len(lines) == 2 + len(base.ks)
    assert lines[-1].startswith("| 8 |") and lines[-1].endswith("| — | — |")
    assert all(line.count("|") == lines[0].count("|") - 2 for line in lines[1:])  # escaped pipes


def test_format_table_has_one_column_per_curve_and_one_row_per_k(base: PassAtK, trained: PassAtK) -> None:
    table = format_table({"base": base, "trained": trained})
    assert len(table.columns) == 3
    assert table.row_count == len(base.ks)
    assert "Pass@k (%)" in str(table.columns[1].header)


def test_print_table_shows_values_and_intervals(base: PassAtK, trained: PassAtK) -> None:
    buffer = io.StringIO()
    print_table({"base [v0]": base, "trained": trained}, Console(file=buffer, width=120))
    text = buffer.getvalue()
    assert "base [v0]" in text  # names are not swallowed as rich markup
    i = base.ks.index(4)
    assert f"{100 * base.mean[i]:.1f} [{100 * base.ci_low[i]:.1f}, {100 * base.ci_high[i]:.1f}]" in text
