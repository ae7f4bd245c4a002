"""`leafe compare`: curves from metrics.json files, eval and run directories, paired differences."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from leafe.cli import main
from leafe.config import ConfigError
from leafe.eval.compare import comparison, find_evaluations, write_comparison
from leafe.eval.passk import compute_pass_at_k
from leafe.eval.report import write_report


def _eval_dir(path, counts, steps=7.5, max_steps=8):
    """A finished `leafe eval` directory: metrics.json with the curve of ``counts`` (task -> (n, c))."""
    result = compute_pass_at_k(counts, [1, 2, 4])
    details = {"env": "sokoban", "max_steps": max_steps, "success_rate": 0.25, "mean_steps": steps, "mean_model_tokens": 1234.0}
    write_report(result, path, "eval", details)
    return path


def test_difference_is_paired_and_the_costs_are_shown(tmp_path):
    base = _eval_dir(tmp_path / "base", {"a": (4, 0), "b": (4, 4)})
    trained = _eval_dir(tmp_path / "trained", {"a": (4, 4), "b": (4, 4)}, steps=3.0)
    evaluations = find_evaluations(str(base)) + find_evaluations(f"mine={trained / 'metrics.json'}")
    assert [e.label for e in evaluations] == ["base", "mine"]
    markdown, record = comparison(evaluations, "t")
    # Pass@1 50% -> 100%: task a gains 100 points, task b none; resampling the two tasks gives 0, 50 or 100.
    assert "| 1 | 50.0 |" in markdown and "| 1 | +50.0 [+0.0, +100.0] |" in markdown
    assert "| mine | 25.0 | 3.00 | 1,234 |" in markdown
    assert record["differences"]["mine"]["difference"][0] == pytest.approx(0.5)


def test_a_pipeline_directory_gives_every_evaluation(tmp_path):
    run = tmp_path / "qs"
    base = _eval_dir(run / "eval-base", {"a": (4, 1), "b": (4, 0)})
    trained = compute_pass_at_k({"a": (4, 2), "b": (4, 1)}, [1, 2, 4])
    (run / "meta.json").write_text(json.dumps({"invocations": [{"command": "run"}]}))
    base_curve = json.loads((base / "metrics.json").read_text())
    # A round whose SFT was skipped reuses the base evaluation: report.json names its folder.
    report = {"pass_at_k": {"base": base_curve, "LEAFE round 1": trained.to_dict()}, "eval_dirs": {"base": "eval-base"}}
    (run / "report.json").write_text(json.dumps(report))
    evaluations = find_evaluations(str(run))
    assert [e.label for e in evaluations] == ["qs: base", "qs: LEAFE round 1"]
    assert evaluations[0].details["mean_steps"] == 7.5 and evaluations[1].details == {}
    paths = write_comparison(evaluations, tmp_path / "out", "t")
    assert paths["plot"].stat().st_size > 0 and "| qs: LEAFE round 1 | ? | ? | ? |" in paths["markdown"].read_text()


def test_bad_input_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="x=nowhere: nowhere does not exist"):
        find_evaluations("x=nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no metrics.json or report.json"):
        find_evaluations(str(tmp_path / "empty"))
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "meta.json").write_text(json.dumps({"invocations": [{"command": "run"}]}))
    with pytest.raises(ConfigError, match="without report.json"):
        find_evaluations(str(tmp_path / "unfinished"))
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ConfigError, match="other.json holds no Pass@k result written by leafe"):
        find_evaluations(str(tmp_path / "other.json"))
    with pytest.raises(ConfigError, match="no path after the label"):
        find_evaluations("x=")


def test_other_settings_and_run_directories_are_refused(tmp_path):
    one = find_evaluations(str(_eval_dir(tmp_path / "one", {"a": (4, 1)})))
    longer = find_evaluations(str(_eval_dir(tmp_path / "longer", {"a": (4, 2)}, max_steps=16)))
    with pytest.raises(ConfigError, match="longer .* has max_steps=16 but one .* has 8: not the same test setting"):
        comparison(one + longer, "t")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "meta.json").write_text("{}")
    with pytest.raises(ConfigError, match="is a run directory"):
        write_comparison(one, tmp_path / "run", "t")
    markdown, _ = comparison([one[0], replace(one[0], label="a|b")], "t")
    assert "| a\\|b |" in markdown  # a label cannot break the tables


def test_cli_refuses_different_tasks_and_writes_the_comparison(tmp_path, capsys):
    one = _eval_dir(tmp_path / "one", {"a": (4, 1), "b": (4, 2)})
    two = _eval_dir(tmp_path / "two", {"a": (4, 3), "c": (4, 2)})
    same = _eval_dir(tmp_path / "same", {"a": (4, 3), "b": (4, 4)})
    assert main(["compare", str(one), str(two), "--out", str(tmp_path / "bad")]) == 2
    assert "two (" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["compare", str(one), str(one), "--out", str(tmp_path / "twice")]) == 2
    assert "give them labels" in capsys.readouterr().err
    assert main(["compare", str(one), str(same), "--out", str(tmp_path / "cmp")]) == 0
    assert "Difference from one" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {"compare.md", "compare.json", "passk.png"}
