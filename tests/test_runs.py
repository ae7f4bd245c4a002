"""Run directories: metadata, resume rules, crash-safe JSONL."""

import json

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


def test_reopen_resumes_and_allows_neutral_changes(tmp_path):
    RunDir.open(_cfg(tmp_path), command="eval")
    run = RunDir.open(_cfg(tmp_path, eval__num_tasks=20, policy__max_batch_size=4), command="eval")
    assert run.resumed
    assert len(json.loads((run.path / "meta.json").read_text())["invocations"]) == 2


def test_reopen_refuses_result_changing_config(tmp_path):
    RunDir.open(_cfg(tmp_path), command="eval")
    with pytest.raises(ConfigError, match="policy.temperature"):
        RunDir.open(_cfg(tmp_path, policy__temperature=0.1), command="eval")
    fresh = RunDir.open(_cfg(tmp_path, policy__temperature=0.1), command="eval", fresh=True)
    assert not fresh.resumed


def test_reopen_by_another_command_is_refused(tmp_path):
    """`leafe eval` in a `leafe run` directory would write its own passk.png over the run's."""
    RunDir.open(_cfg(tmp_path), command="run")
    with pytest.raises(ConfigError, match="holds a `leafe run` run; `leafe eval` would mix"):
        RunDir.open(_cfg(tmp_path), command="eval")
    assert RunDir.open(_cfg(tmp_path), command="run").resumed
    assert not RunDir.open(_cfg(tmp_path), command="eval", fresh=True).resumed


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
