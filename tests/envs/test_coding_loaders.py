"""Loaders of CodeContests, APPS and MBPP files, on tiny fixtures in their published formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leafe.envs.coding_loaders import load_apps, load_codecontests, load_mbpp
from leafe.envs.coding_tasks import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "coding"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def test_codecontests_jsonl_keeps_all_test_kinds_and_the_python3_solution():
    problems = {p.problem_id: p for p in load_codecontests(FIXTURES / "codecontests.jsonl")}
    assert list(problems) == ["1000_A. Sum of two", "1000_B. Average", "1000_C. Only C++"]
    first = problems["1000_A. Sum of two"]
    assert first.style == "stdio" and first.statement.startswith("Given two integers")
    assert [(t.input, t.output) for t in first.tests] == [("1 2\n", "3\n"), ("5 7\n", "12\n"), ("-1 1\n", "0\n"), ("100 200\n", "300\n")]
    assert first.solution == "a, b = map(int, input().split())\nprint(a + b)\n"  # language 3, not the C++ one
    assert problems["1000_C. Only C++"].solution is None


def test_codecontests_parquet_reads_like_jsonl(tmp_path):
    parquet = pytest.importorskip("pyarrow.parquet")
    import pyarrow

    rows = _rows("codecontests.jsonl")
    parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "test-00000-of-00001.parquet")
    assert load_codecontests(tmp_path) == load_codecontests(FIXTURES / "codecontests.jsonl")


def test_apps_jsonl_stdio_call_based_and_leetcode_class():
    problems = {p.problem_id: p for p in load_apps(FIXTURES / "apps.jsonl")}
    assert list(problems) == ["4000", "4001", "4002"]  # 4003 has no tests: skipped
    assert problems["4000"].style == "stdio" and problems["4000"].tests[2].input == "-5\n"
    call = problems["4001"]
    assert (call.style, call.entry_point, call.starter_code) == ("function", "add", "def add(a, b):\n")
    assert call.tests[0].shown == "add(1, 2) == [3]"
    assert "Solution()" in problems["4002"].test_setup


def test_apps_original_directory_layout_matches_jsonl():
    from_dir = load_apps(FIXTURES / "apps_dir")
    from_jsonl = {p.problem_id: p for p in load_apps(FIXTURES / "apps.jsonl")}
    assert [p.problem_id for p in from_dir] == ["0000", "0001"]
    assert from_dir[0].tests == from_jsonl["4000"].tests and from_dir[1].tests == from_jsonl["4001"].tests


def test_mbpp_original_and_sanitized():
    original = load_mbpp(FIXTURES / "mbpp.jsonl")
    assert [(p.problem_id, p.entry_point, len(p.tests)) for p in original] == [("901", "larger", 3), ("902", "common", 2)]
    assert original[0].statement.endswith("assert larger(1, 2) == 2")  # the first test shows the signature
    (sanitized,) = load_mbpp(FIXTURES / "mbpp_sanitized.json")
    assert sanitized.entry_point == "hypot" and sanitized.test_setup == "import math"


@pytest.mark.parametrize(
    "loader, name, content, message",
    [
        (load_mbpp, "m.jsonl", '{"task_id": 1, "text": "t", "code": "c"}\n', "m.jsonl: line 1: missing field 'test_list'"),
        (load_mbpp, "m.jsonl", '{"task_id": 1, "text": "t", "code": "c", "test_list": "assert f()"}\n',
         "m.jsonl: line 1: field 'test_list' should be list, got str"),
        (load_mbpp, "m.jsonl", '\n{"task_id": 1,\n', "m.jsonl: line 2: not valid JSON"),
        (load_mbpp, "m.jsonl", b'\n\xff\xfe\n', "m.jsonl: not UTF-8 text"),
        (load_apps, "a.jsonl", '{"problem_id": 7, "question": "q", "input_output": "{not json"}\n',
         "a.jsonl: line 1: field 'input_output' is not valid JSON"),
        (load_apps, "a.jsonl", '{"problem_id": 7, "question": "q", "input_output": "{\\"inputs\\": [\\"1\\"], \\"outputs\\": []}"}\n',
         "a.jsonl: line 1: field 'input_output' needs 'inputs' and 'outputs' lists of equal length"),
        (load_codecontests, "c.jsonl", '{"name": "x", "description": "d", "public_tests": {"input": ["1"]}}\n',
         "c.jsonl: line 1: field 'public_tests' needs 'input' and 'output' lists of equal length"),
        (load_codecontests, "c.json", '{"name": "x"}', "c.json: expected a JSON list of problems"),
        (load_codecontests, "c.csv", "name,description\n", "c.csv: unsupported file type"),
        (load_codecontests, "c.parquet", "not parquet", "c.parquet: not a readable parquet file"),
    ],
)
def test_malformed_data_names_file_row_and_field(tmp_path, loader, name, content, message):
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(DataError) as error:
        loader(tmp_path / name)
    assert message in str(error.value)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_mbpp(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="directory has no"):
        load_codecontests(tmp_path)
