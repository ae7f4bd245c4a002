"""Reports: metrics.json, the Pass@k plot, summary.md and the terminal table."""

import json

from rich.console import Console

from leafe.eval.passk import PassAtK, compute_pass_at_k
from leafe.eval.report import format_table, markdown_table, plot_pass_at_k, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _result(shift: int = 0) -> PassAtK:
    return compute_pass_at_k({f"t{i}": (8, (i + shift) % 4) for i in range(12)}, ks=[1, 2, 4, 8])


def test_write_report_writes_all_three_files(tmp_path):
    paths = write_report(_result(), tmp_path, title="demo run", details={"model": "m", "throughput": {"tok_s": 1.5}})
    metrics = json.loads(paths["metrics"].read_text())
    assert PassAtK.from_dict(metrics) == _result()
    assert metrics["details"]["model"] == "m" and metrics["title"] == "demo run"
    summary = paths["summary"].read_text()
    for k in (1, 2, 4, 8):
        assert f"\n| {k} |" in summary
    assert "passk.png" in summary and "**model**: m" in summary and "tok_s=1.5" in summary
    png = paths["plot"].read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


def test_comparison_plot_and_tables(tmp_path):
    curves = {"base": _result(), "trained": _result(shift=1)}
    path = plot_pass_at_k(curves, tmp_path / "sub" / "cmp.png", title="base vs trained")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    table = markdown_table(curves)
    assert "base Pass@k (%)" in table and "trained Pass@k (%)" in table and table.count("\n") == 6
    console = Console(record=True, width=120)
    console.print(format_table(curves))
    text = console.export_text()
    assert "base" in text and "trained" in text and f"{100 * _result().mean[0]:.1f}" in text
