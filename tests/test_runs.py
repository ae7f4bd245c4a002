"""Run directories: metadata, resume rules, crash-safe JSONL."""

import json
import os

import pytest

from leafe.config import ConfigError, config_from_dict
from leafe.runs import RunDir, append_jsonl, read_jsonl


def _cfg(tmp_path, **overrides):
    data = {"name": "r", "output_dir": str(tmp_path)}
    for key, value in overrides.items():
        section, field = key.split("__")
        data.setdefault(section, {})[field] = value
    return config_from_dict(data)


def test_open_writes_config_meta_and_log(tmp_path):
    run = RunDir.open(_cfg(tmp_path), command="eval")
    assert not run.resumed
    assert (run.path / "config.yaml").exists() and (run.path / "leafe.log").exists()
    meta = json.loads((run.path / "meta.json").read_text())
    assert meta["seed"] == 0 and meta["invocations"][0]["versions"]["python"]


def _open_with_work(cfg, command: str) -> RunDir:
    """A run directory holding a finished record (so it is a run to resume, not an empty one)."""
    run = RunDir.open(cfg, command=command)
    append_jsonl(run.path / "episodes.jsonl", {"task": {"task_id": "t"}, "sample_index": 0})
    return run


def test_reopen_resumes_and_allows_neutral_changes(tmp_path):
    _open_with_work(_cfg(tmp_path), "eval")
    run = RunDir.open(_cfg(tmp_path, eval__num_tasks=20, policy__max_batch_size=4), command="eval")
    assert run.resumed
    assert len(json.loads((run.path / "meta.json").read_text())["invocations"]) == 2


def test_a_run_directory_renamed_by_hand_resumes_under_its_new_name(tmp_path):
    old = _open_with_work(_cfg(tmp_path), "eval")
    old.path.rename(tmp_path / "renamed")
    run = RunDir.open(config_from_dict({"name": "renamed", "output_dir": str(tmp_path)}), command="eval")
    assert run.resumed and (run.path / "episodes.jsonl").exists()


def test_reopen_refuses_result_changing_config(tmp_path):
    _open_with_work(_cfg(tmp_path), "eval")
    with pytest.raises(ConfigError, match="policy.temperature"):
        RunDir.open(_cfg(tmp_path, policy__temperature=0.1), command="eval")
    fresh = RunDir.open(_cfg(tmp_path, policy__temperature=0.1), command="eval", fresh=True)
    assert not fresh.resumed


def test_reopen_by_another_command_is_refused(tmp_path):
    """`leafe eval` in a `leafe run` directory would write its own passk.png over the run's."""
    _open_with_work(_cfg(tmp_path), "run")
    with pytest.raises(ConfigError, match="holds a `leafe run` run; `leafe eval` would mix"):
        RunDir.open(_cfg(tmp_path), command="eval")
    assert RunDir.open(_cfg(tmp_path), command="run").resumed
    assert not RunDir.open(_cfg(tmp_path), command="eval", fresh=True).resumed


def test_a_run_that_finished_nothing_can_be_taken_over(tmp_path):
    """A run whose model failed to load leaves only its config, meta.json and log: fixing the
    typo (another config) or running another command there needs no --fresh."""
    failed = RunDir.open(_cfg(tmp_path, policy__model="/no/such/model"), command="run")
    (failed.path / "eval-base" / "empty").mkdir(parents=True)  # a stage folder made before the model failed
    run = RunDir.open(_cfg(tmp_path), command="eval")
    assert not run.resumed
    assert [i["command"] for i in json.loads((run.path / "meta.json").read_text())["invocations"]] == ["eval"]
    append_jsonl(run.path / "episodes.jsonl", {"task": {"task_id": "t"}, "sample_index": 0})
    with pytest.raises(ConfigError, match="policy.temperature"):  # now it holds work
        RunDir.open(_cfg(tmp_path, policy__temperature=0.1), command="eval")


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda run: (run / "meta.json").write_text("{"), "meta.json: unreadable"),
        (lambda run: (run / "meta.json").write_text("{}"), "meta.json: has no list of invocations"),
        (lambda run: (run / "config.yaml").write_text("a: [1"), "config.yaml: unreadable"),
        (lambda run: (run / "config.yaml").write_text("- 1"), "config.yaml: not a config leafe wrote"),
    ],
)
def test_spoilt_bookkeeping_is_a_clear_error_naming_the_file(tmp_path, spoil, message):
    run = _open_with_work(_cfg(tmp_path), "eval")
    spoil(run.path)
    with pytest.raises(ConfigError, match=f"{message}.*--fresh"):
        RunDir.open(_cfg(tmp_path), command="eval")
    assert not RunDir.open(_cfg(tmp_path), command="eval", fresh=True).resumed


def test_an_unusable_run_directory_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="output_dir: .*afile is a file"):
        RunDir.check(_cfg(tmp_path / "afile"), "eval")
    with pytest.raises(ConfigError, match="name: the run directory .* is a file"):
        RunDir.check(config_from_dict({"output_dir": str(tmp_path), "name": "afile"}), "eval")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # (root may write anywhere)
        with pytest.raises(ConfigError, match="output_dir: cannot write in"):
            RunDir.check(_cfg(locked), "eval")


def test_jsonl_skips_lines_that_are_not_records(tmp_path, caplog):
    path = tmp_path / "episodes.jsonl"
    path.write_bytes(b'{"a": 1}\n42\n\xff\xfe\n["x"]\n\n{"a": 2}\n')
    assert list(read_jsonl(path)) == [{"a": 1}, {"a": 2}]
    assert "not a JSON object" in caplog.text and "not UTF-8" in caplog.text
    with pytest.raises(ConfigError, match="is a directory"):
        list(read_jsonl(tmp_path))


def test_jsonl_skips_torn_last_line(tmp_path):
    path = tmp_path / "episodes.jsonl"
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"a": 2})
    with path.open("a") as handle:
        handle.write('{"a": 3, "trunc')
    assert [r["a"] for r in read_jsonl(path)] == [1, 2]
    append_jsonl(path, {"a": 4})  # a resumed run appends after the torn line
    assert [r["a"] for r in read_jsonl(path)] == [1, 2, 4]
    assert list(read_jsonl(tmp_path / "missing.jsonl")) == []


def test_write_atomic_replaces_and_keeps_normal_permissions(tmp_path):
    from leafe.runs import write_atomic

    target = tmp_path / "nested" / "out.txt"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    assert target.read_text() == "two"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
