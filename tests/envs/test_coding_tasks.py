"""Problem sources and their train/test split: HumanEval, generated problems, CodingTasks."""

from __future__ import annotations

import pytest

from leafe.envs.coding_tasks import (
    GENERATED_KINDS,
    CodingTasks,
    DataError,
    Problem,
    TestCase,
    generated_problems,
    humaneval_problems,
    split_key,
    split_of,
)


def test_humaneval_has_164_problems_with_tests_and_solutions():
    problems = humaneval_problems()
    assert len(problems) == 164 and problems[0].problem_id == "HumanEval/0"
    for problem in problems:
        assert problem.style == "function" and problem.tests and problem.solution.startswith(problem.starter_code)
        assert f"candidate = {problem.entry_point}" in problem.test_setup
    first = problems[0].tests[0]
    assert first.shown.startswith("assert has_close_elements(") and "candidate" in first.code
    # statements before an assert (imports, helpers) stay in front of it
    loop = next(p for p in problems if p.problem_id == "HumanEval/53").tests[-1]
    assert loop.code.splitlines()[0] == "import random" and loop.code.count("assert") == 1


def test_generated_problems_are_deterministic_and_distinct():
    problems = generated_problems()
    assert len(problems) == len({p.problem_id for p in problems}) == 140
    assert {p.style for p in problems} == {"function", "stdio"}
    assert all(p.solution and len(p.tests) >= 5 for p in problems)
    generated_problems.cache_clear()
    assert generated_problems() == problems


@pytest.mark.parametrize("source, problems", [("generated", generated_problems), ("humaneval", humaneval_problems)])
def test_splits_are_disjoint_stable_and_complete(source, problems):
    tasks = CodingTasks(source, problems(), test_fraction=0.5)
    train, test = tasks.tasks("train"), tasks.tasks("test")
    assert not {t.params["problem_id"] for t in train} & {t.params["problem_id"] for t in test}
    assert len(train) + len(test) == len(problems()) and min(len(train), len(test)) > len(problems()) // 4
    assert all(split_of(t.params["problem_id"], 0.5) == "test" for t in test)
    assert tasks.tasks("test", 3) == test[:3] and test[0].task_id == f"coding/{source}/{test[0].params['problem_id']}"


def test_template_split_shares_no_template_between_train_and_test():
    by_problem = CodingTasks("generated", generated_problems(), test_fraction=0.5)
    by_template = CodingTasks("generated", generated_problems(), test_fraction=0.5, split_by="template")

    def templates(tasks, split):
        return {t.params["problem_id"].split("/")[0] for t in tasks.tasks(split)}

    assert templates(by_problem, "train") & templates(by_problem, "test")  # the default split shares them
    train, test = templates(by_template, "train"), templates(by_template, "test")
    assert train and test and not train & test and train | test == set(GENERATED_KINDS)
    assert len(by_template.tasks("train")) + len(by_template.tasks("test")) == len(generated_problems())
    assert all(split_of(kind, 0.5) == "test" for kind in test)
    assert split_key("generated", "add/3", "template") == "add" and split_key("humaneval", "HumanEval/3", "problem") == "HumanEval/3"
    with pytest.raises(ValueError, match="only applies to the generated source"):
        CodingTasks("humaneval", humaneval_problems(), split_by="template")
    with pytest.raises(ValueError, match="split_by must be one of"):
        CodingTasks("generated", generated_problems(), split_by="parameter")


def test_task_count_and_split_errors():
    tasks = CodingTasks("generated", generated_problems())
    with pytest.raises(ValueError, match=r"has \d+ test problems, 1000 were asked for"):
        tasks.tasks("test", 1000)
    with pytest.raises(ValueError, match="unknown split"):
        tasks.tasks("valid", 1)
    duplicate = Problem("p", "s", "stdio", (TestCase(input="", output=""),))
    with pytest.raises(DataError, match="appears twice"):
        CodingTasks("x", [duplicate, duplicate])
    with pytest.raises(ValueError, match="style"):
        Problem("p", "s", "repl", ())
