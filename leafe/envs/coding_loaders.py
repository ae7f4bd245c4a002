"""Loaders for programming problems in their published formats (files the user already has).

* CodeContests (``deepmind/code_contests`` on the Hugging Face hub): parquet shards, or the same
  rows as JSON lines. Fields used: ``name``, ``description``, ``public_tests`` /
  ``private_tests`` / ``generated_tests`` (``{"input": [...], "output": [...]}``) and
  ``solutions`` (``{"language": [...], "solution": [...]}``; the first Python 3 one, language 3,
  is the expert demonstration). Tests: public, then private, then generated.
* APPS (``codeparrot/apps``): JSON lines with ``problem_id``, ``question``, ``input_output`` (a
  JSON string ``{"inputs", "outputs", "fn_name"?}``), ``solutions`` (a JSON string list) and
  ``starter_code``; or the original layout, a directory with one folder per problem holding
  ``question.txt``, ``input_output.json``, ``solutions.json`` and ``starter_code.py``. With
  ``fn_name`` the tests call that function (or ``Solution().fn_name``), else they use stdin.
* MBPP (``mbpp.jsonl``, or the hub's parquet): ``task_id``, ``text`` (``prompt`` in the sanitized
  set), ``code``, ``test_list``, ``test_setup_code`` / ``test_imports``. The first test is shown in
  the statement (it fixes the function's name and signature); all are run.

``path`` is a file (``.jsonl``, ``.jsonl.gz``, ``.json`` holding a list, ``.parquet``) or a
directory whose such files are read in name order. Problems without any test are skipped (APPS
has some in its train set); anything else missing or malformed raises :class:`DataError` naming
the file, row and field.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from leafe.envs.coding_tasks import DataError, Problem, TestCase

logger = logging.getLogger(__name__)

_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
_PYTHON3 = 3  # CodeContests' Language enum: 0 unknown, 1 Python 2, 2 C++, 3 Python 3, 4 Java


def _data_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_file():
        if not path.name.endswith(_SUFFIXES):
            raise DataError(f"{path}: unsupported file type; expected one of {', '.join(_SUFFIXES)}")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_SUFFIXES))
    if not files:
        raise DataError(f"{path}: directory has no {', '.join(_SUFFIXES)} files")
    return files


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of every data file under ``path``; ``where`` names file and row."""
    for file in _data_files(path):
        if file.name.endswith(".parquet"):
            try:
                import pyarrow.parquet as parquet
            except ImportError:
                raise DataError(f"{file}: reading parquet needs pyarrow: pip install 'leafe[coding]'") from None
            try:
                rows = parquet.read_table(file).to_pylist()
            except Exception as error:  # pyarrow raises several unrelated types for bad files
                raise DataError(f"{file}: not a readable parquet file ({error})") from None
            yield from ((f"{file}: row {index}", row) for index, row in enumerate(rows))
        elif file.name.endswith(".json"):
            try:
                data = json.loads(file.read_text())
            except (ValueError, UnicodeDecodeError) as error:
                raise DataError(f"{file}: not valid JSON ({error})") from None
            if not isinstance(data, list):
                raise DataError(f"{file}: expected a JSON list of problems")
            yield from ((f"{file}: item {index}", row) for index, row in enumerate(data))
        else:
            opener = gzip.open if file.name.endswith(".gz") else open
            try:
                with opener(file, "rt", encoding="utf-8") as handle:
                    for number, line in enumerate(handle, start=1):
                        if line.strip():
                            try:
                                record = json.loads(line)
                            except ValueError as error:
                                raise DataError(f"{file}: line {number}: not valid JSON ({error})") from None
                            yield f"{file}: line {number}", record
            except UnicodeDecodeError as error:
                raise DataError(f"{file}: not UTF-8 text ({error.reason} at byte {error.start} of a line)") from None


def _get(row: Any, name: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
    if row.get(name) is None:
        raise DataError(f"{where}: missing field {name!r}")
    value = row[name]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {name!r} should be {expected}, got {type(value).__name__}")
    return value


def _io_pairs(value: Any, where: str, name: str) -> list[tuple[str, str]]:
    """CodeContests' ``{"input": [...], "output": [...]}`` as (input, output) pairs."""
    if not isinstance(value, dict):
        raise DataError(f"{where}: field {name!r} should be an object with 'input' and 'output' lists")
    inputs, outputs = value.get("input"), value.get("output")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise DataError(f"{where}: field {name!r} needs 'input' and 'output' lists of equal length")
    if not all(isinstance(text, str) for text in inputs + outputs):
        raise DataError(f"{where}: field {name!r}: every input and output must be a string")
    return list(zip(inputs, outputs))


def load_codecontests(path: str | Path) -> list[Problem]:
    """CodeContests problems from ``path`` (see the module docstring)."""
    problems = []
    for where, row in _rows(Path(path)):
        name = _get(row, "name", where)
        tests = []
        for field_name in ("public_tests", "private_tests", "generated_tests"):
            if row.get(field_name) is not None:
                tests += _io_pairs(row[field_name], where, field_name)
        if not tests:
            logger.info("%s: %s has no tests; skipped", where, name)
            continue
        solution = None
        if row.get("solutions") is not None:
            solutions = row["solutions"]
            if not isinstance(solutions, dict) or not isinstance(solutions.get("language"), list) \
                    or not isinstance(solutions.get("solution"), list):
                raise DataError(f"{where}: field 'solutions' should be an object with 'language' and 'solution' lists")
            solution = next((code for language, code in zip(solutions["language"], solutions["solution"])
                             if language == _PYTHON3), None)
        problems.append(Problem(
            problem_id=name,
            statement=_get(row, "description", where),
            style="stdio",
            tests=tuple(TestCase(input=given, output=expected) for given, expected in tests),
            solution=solution,
        ))
    return problems


def _as_text(value: Any, where: str, what: str) -> str:
    """APPS stores stdin/stdout either as a string or as a list of lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "\n".join(value) + "\n"
    raise DataError(f"{where}: field 'input_output': {what} must be a string or a list of lines")


def _json_field(row: dict, name: str, where: str) -> Any:
    """A field APPS stores as a JSON string (empty string: absent)."""
    raw = _get(row, name, where, (str, list, dict))
    if not isinstance(raw, str):
        return raw
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as error:
        raise DataError(f"{where}: field {name!r} is not valid JSON ({error})") from None


def _apps_problem(where: str, row: dict) -> Problem | None:
    problem_id = str(_get(row, "problem_id", where, (str, int)))
    io = _json_field(row, "input_output", where)
    if io is None:
        return None
    if not isinstance(io, dict) or not isinstance(io.get("inputs"), list) or not isinstance(io.get("outputs"), list) \
            or len(io["inputs"]) != len(io["outputs"]):
        raise DataError(f"{where}: field 'input_output' needs 'inputs' and 'outputs' lists of equal length")
    if not io["inputs"]:
        return None
    starter = row.get("starter_code") or ""
    solutions = _json_field(row, "solutions", where) if row.get("solutions") not in (None, "") else None
    solution = solutions[0] if isinstance(solutions, list) and solutions and isinstance(solutions[0], str) else None
    fn_name = io.get("fn_name")
    if fn_name is None:
        tests = tuple(TestCase(input=_as_text(i, where, "inputs"), output=_as_text(o, where, "outputs"))
                      for i, o in zip(io["inputs"], io["outputs"]))
        return Problem(problem_id, _get(row, "question", where), "stdio", tests, solution=solution)
    if not isinstance(fn_name, str) or not fn_name.isidentifier():
        raise DataError(f"{where}: field 'input_output': fn_name must be a function name, got {fn_name!r}")
    tests = []
    for args, expected in zip(io["inputs"], io["outputs"]):
        if not isinstance(args, list):
            raise DataError(f"{where}: field 'input_output': call inputs must be lists of arguments")
        shown = f"{fn_name}({', '.join(repr(arg) for arg in args)}) == {expected!r}"
        # APPS wraps some expected values in a one-element list and compares lists to tuples.
        code = (f"__leafe_got = candidate(*{args!r})\n"
                f"__leafe_got = list(__leafe_got) if isinstance(__leafe_got, tuple) else __leafe_got\n"
                f"assert __leafe_got == {expected!r} or [__leafe_got] == {expected!r}")
        tests.append(TestCase(code=code, shown=shown))
    setup = (f"candidate = Solution().{fn_name} if 'Solution' in globals() and not callable(globals().get({fn_name!r}))"
             f" else {fn_name}")
    return Problem(problem_id, _get(row, "question", where), "function", tuple(tests), entry_point=fn_name,
                   starter_code=starter, test_setup=setup, solution=solution)


def _apps_directory_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows from APPS' original layout: one folder per problem."""
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        row: dict[str, Any] = {"problem_id": folder.name}
        for field_name, file_name in (("question", "question.txt"), ("input_output", "input_output.json"),
                                      ("solutions", "solutions.json"), ("starter_code", "starter_code.py")):
            file = folder / file_name
            if file.is_file():
                row[field_name] = file.read_text(encoding="utf-8")
        if "question" not in row:
            raise DataError(f"{folder}: missing question.txt")
        row.setdefault("input_output", "")
        yield str(folder), row


def load_apps(path: str | Path) -> list[Problem]:
    """APPS problems from ``path`` (see the module docstring)."""
    path = Path(path)
    original = path.is_dir() and any((child / "question.txt").is_file() for child in path.iterdir() if child.is_dir())
    rows = _apps_directory_rows(path) if original else _rows(path)
    problems = [problem for where, row in rows if (problem := _apps_problem(where, row)) is not None]
    return problems


_CALLED = re.compile(r"assert\s+(?:not\s+)?\(?\s*(?:set\(|sorted\(|math\.isclose\()?\s*([A-Za-z_]\w*)\s*\(")


def load_mbpp(path: str | Path) -> list[Problem]:
    """MBPP problems from ``path`` (see the module docstring)."""
    problems = []
    for where, row in _rows(Path(path)):
        problem_id = str(_get(row, "task_id", where, (str, int)))
        text = row.get("text") if row.get("text") is not None else row.get("prompt")
        if not isinstance(text, str):
            raise DataError(f"{where}: missing field 'text' (or 'prompt' in the sanitized set)")
        test_list = _get(row, "test_list", where, list)
        if not test_list or not all(isinstance(test, str) for test in test_list):
            raise DataError(f"{where}: field 'test_list' must be a non-empty list of assert statements")
        match = _CALLED.match(test_list[0].strip())
        if match is None:
            raise DataError(f"{where}: field 'test_list': cannot find the function called by {test_list[0]!r}")
        setup_parts = [row.get("test_setup_code") or "", *(row.get("test_imports") or [])]
        problems.append(Problem(
            problem_id=problem_id,
            statement=f"{text.strip()}\nYour function must pass tests like this one:\n{test_list[0].strip()}",
            style="function",
            tests=tuple(TestCase(code=test.strip(), shown=test.strip()) for test in test_list),
            entry_point=match.group(1),
            test_setup="\n".join(part for part in setup_parts if part.strip()),
            solution=_get(row, "code", where),
        ))
    return problems
