"""The coding environment: contract (check_env), feedback for every kind of failure, config errors.

Every submission really runs in the sandbox; tests use short limits so time-outs cost ~1 s.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leafe.config import CodingConfig, ConfigError, config_from_dict
from leafe.envs import build_env
from leafe.envs.checker import check_env
from leafe.envs.coding import CodingEnv, extract_program, load_problems, outputs_match
from leafe.envs.coding_tasks import CodingTasks, generated_problems
from leafe.policy.base import Generation, SamplingParams
from leafe.prompting import Prompter
from leafe.rollout import make_jobs, run_episodes
from leafe.sandbox import SandboxLimits

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "coding"
QUICK = SandboxLimits(cpu_seconds=1, wall_seconds=2, memory_mb=256)


def _env_and_tasks(source: str, data_path: str | None = None) -> tuple[CodingEnv, CodingTasks]:
    tasks = CodingTasks(source, load_problems(source, data_path))
    return CodingEnv(tasks.problems, limits=QUICK), tasks


def _generated(problem_id: str) -> tuple[CodingEnv, object]:
    env, tasks = _env_and_tasks("generated")
    task = next(t for t in tasks.tasks("train") + tasks.tasks("test") if t.params["problem_id"] == problem_id)
    env.reset(task)
    return env, task


@pytest.mark.parametrize(
    "source, data_path, count",
    [
        ("generated", None, 2),
        ("humaneval", None, 1),
        ("codecontests", "codecontests.jsonl", None),
        ("apps", "apps.jsonl", None),
        ("apps", "apps_dir", None),
        ("mbpp", "mbpp.jsonl", None),
        ("mbpp", "mbpp_sanitized.json", None),
    ],
)
def test_check_env_passes_on_every_source(source, data_path, count):
    env, tasks = _env_and_tasks(source, str(FIXTURES / data_path) if data_path else None)
    chosen = tasks.tasks("train", None)[:count] + tasks.tasks("test", None)[:count]
    report = check_env(lambda: CodingEnv(tasks.problems, limits=QUICK), chosen, plan_length=3)
    with_solution = [t for t in chosen if tasks.problems[t.params["problem_id"]].solution]
    assert report.tasks_checked == len(chosen) > 0 and report.snapshot_checked
    assert report.experts_checked == len(with_solution) > 0
    assert report.steps_checked > len(chosen)  # probe programs were played, not only the experts


def test_expert_solution_solves_and_ends_the_episode():
    env, task = _generated("add/3")
    (program,) = env.expert_actions(task)
    observation, reward, terminated, truncated, info = env.step(program)
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert observation == "All 5 tests passed: the problem is solved."
    assert info["success"] and info["tests_passed"] == info["tests_total"] == 5 and info["submissions"] == 1
    with pytest.raises(RuntimeError, match="reset"):
        env.step(program)


def test_wrong_function_shows_the_test_and_the_returned_value():
    env, _ = _generated("add/3")
    observation, reward, terminated, _, info = env.step("```python\ndef add_3(x):\n    return x + 4\n```")
    assert reward == 0.0 and not terminated and info["outcome"] == "wrong_answer"
    assert "Test 1 of 5 failed: wrong answer." in observation
    assert "assert add_3(" in observation and "Your function returned:" in observation
    assert "0 of 5 tests passed" in observation


def test_diagnosis_points_at_the_first_failed_submission_with_its_feedback():
    env, task = _generated("add/3")
    (solution,) = env.expert_actions(task)
    wrong = "```python\ndef add_3(x):\n    return x + 4\n```"
    first_feedback = env.step(wrong)[0]
    assert env.diagnose(task, [solution]) is None and env.diagnose(task, []) is None
    diagnosis = env.diagnose(task, [wrong, solution])
    assert diagnosis.rollback_step == 1
    assert diagnosis.summary.startswith("The program of turn 1 failed: Test 1 of 5 failed: wrong answer.")
    assert " ".join(first_feedback.split())[:60] in diagnosis.summary
    missing = env.diagnose(task, [solution.replace("return", "retrun"), None])
    assert missing.rollback_step == 1 and "syntax error on line 2" in missing.summary
    assert env.diagnose(task, [None, wrong]).rollback_step == 1
    assert "no program" in env.diagnose(task, [None]).summary


def test_wrong_stdio_output_shows_input_expected_and_got():
    env, _ = _generated("stdin_add/3")
    observation, _, _, _, info = env.step("print(int(input()) + 4)")
    assert info["outcome"] == "wrong_answer" and info["tests_passed"] == 0
    lines = observation.splitlines()
    shown_input = int(lines[lines.index("Input:") + 1])
    assert int(lines[lines.index("Expected output:") + 1]) == shown_input + 3
    assert int(lines[lines.index("Your output:") + 1]) == shown_input + 4


def test_syntax_error_names_the_line():
    env, _ = _generated("add/3")
    observation, _, _, _, info = env.step("def add_3(x):\n    return x +\n")
    assert info["outcome"] == "syntax_error"
    assert observation.startswith("Your program has a syntax error on line 2") and "return x +" in observation


def test_runtime_error_names_the_exception_and_line():
    env, _ = _generated("add/3")
    observation, _, _, _, info = env.step("def add_3(x):\n    y = 0\n    return x / y\n")
    assert info["outcome"] == "runtime_error"
    assert "ZeroDivisionError: division by zero (line 3 of your program)" in observation


def test_missing_function_is_named():
    env, _ = _generated("add/3")
    observation, _, _, _, _ = env.step("def add_three(x):\n    return x + 3\n")
    assert "does not define the function `add_3`" in observation


def test_hanging_program_times_out_and_the_episode_goes_on():
    env, task = _generated("stdin_add/3")
    observation, _, terminated, _, info = env.step("while True:\n    pass\n")
    assert info["outcome"] == "time_limit" and not terminated and "time limit exceeded" in observation
    observation, _, _, _, info = env.step("import time\ntime.sleep(30)\n")
    assert info["outcome"] == "time_limit" and "still running after 2 s" in observation
    _, reward, terminated, _, _ = env.step(env.expert_actions(task)[0])
    assert reward == 1.0 and terminated


def test_interpreter_crash_and_memory_blowup_are_reported():
    env, _ = _generated("add/3")
    observation, _, _, _, info = env.step("import faulthandler\nfaulthandler._sigsegv()\n")
    assert info["outcome"] == "crash" and "SIGSEGV" in observation
    observation, _, _, _, info = env.step("def add_3(x):\n    return len([0] * (10 ** 9))\n")
    assert info["outcome"] == "memory_limit" and "memory limit exceeded (more than 256 MB)" in observation


def test_exit_before_the_tests_is_explained():
    env, _ = _generated("add/3")
    observation, _, _, _, _ = env.step("import sys\nsys.exit(0)\n")
    assert "exited before the test ran" in observation


def test_same_program_same_feedback_and_snapshots_restore():
    env, task = _generated("max_times/4")
    program = "import random\ndef max_times_4(numbers):\n    return random.randint(0, 10 ** 9)\n"
    first = env.step(program)
    snapshot = env.snapshot()
    second = env.step(program)
    assert first[0] == second[0]  # random is seeded per run
    env.restore(snapshot)
    assert env.step(program)[0] == second[0] and env.snapshot().submissions == 2
    with pytest.raises(TypeError):
        env.restore("not a snapshot")


def test_memory_addresses_are_masked_in_feedback():
    env, _ = _generated("add/3")
    observation, *_ = env.step("def add_3(x):\n    return object()\n")
    assert "0x..." in observation


def test_max_tests_caps_the_tests_run():
    tasks = CodingTasks("generated", generated_problems())
    task = tasks.tasks("test", 1)[0]
    env = CodingEnv(tasks.problems, limits=QUICK, max_tests=2)
    _, info = env.reset(task)
    assert info["tests_total"] == 2
    *_, info = env.step(env.expert_actions(task)[0])
    assert info["success"] and info["tests_passed"] == 2


def test_codecontests_float_answers_and_hidden_tests():
    env, tasks = _env_and_tasks("codecontests", str(FIXTURES / "codecontests.jsonl"))
    task = next(t for split in ("train", "test") for t in tasks.tasks(split) if t.params["problem_id"] == "1000_B. Average")
    env.reset(task)
    *_, info = env.step("n = int(input())\nprint(sum(map(int, input().split())) / n + 1e-9)\n")
    assert info["success"]
    assert tasks.problems["1000_C. Only C++"].solution is None and env.expert_actions(
        next(t for s in ("train", "test") for t in tasks.tasks(s) if "C++" in t.task_id)) == []


def test_extract_program_and_output_comparison():
    assert extract_program("Here:\n```python\nprint(1)\n```\ntrailing") == "print(1)"
    assert extract_program("```\nprint(2)") == "print(2)"  # cut off before the closing fence
    assert extract_program("print(3)") == "print(3)"
    assert outputs_match("1 2\n3\n", "1 2 3")
    assert outputs_match("0.5000000\n", "0.5")
    assert not outputs_match("0.5\n", "0.6")
    assert not outputs_match("yes\n", "YES\n") and not outputs_match("1 2", "1 2 3")


def test_a_hanging_and_a_crashing_episode_still_end_with_feedback_in_the_rollout():
    """The loop survives programs that hang or kill the interpreter, and the episode continues."""
    tasks = CodingTasks("generated", generated_problems())
    task = next(t for t in tasks.tasks("test") if t.params["problem_id"] == "add/3")
    script = [
        " loop\nAction:\n```python\nwhile True:\n    pass\n```",
        " crash\nAction:\n```python\nimport faulthandler\nfaulthandler._sigsegv()\n```",
        " fix\nAction:\n```python\ndef add_3(x):\n    return x + 3\n```",
    ]

    class Script:
        name = "scripted"

        def generate(self, requests, params):
            return [Generation(script[request.prompt.count("Observation:") - 1], request.prompt, 1, 1, "stop")
                    for request in requests]

    prompter = Prompter(history_window=5, action_format="code")
    make_env = lambda: CodingEnv(tasks.problems, limits=QUICK)  # noqa: E731
    (trajectory,) = run_episodes(make_jobs([task], 1, 0), make_env, Script(), prompter, SamplingParams(), max_steps=5)
    outcomes = [step.info["outcome"] for step in trajectory.steps]
    assert outcomes == ["time_limit", "crash", "passed"] and trajectory.success
    assert "time limit exceeded" in trajectory.steps[1].prompt  # feedback reached the next prompt


def test_config_builds_the_env_and_bad_data_is_a_clear_config_error(tmp_path):
    cfg = config_from_dict({"env": {"name": "coding", "source": "mbpp", "data_path": str(FIXTURES / "mbpp.jsonl")}})
    make_env, tasks = build_env(cfg.env)
    assert isinstance(make_env(), CodingEnv) and len(tasks.problems) == 2
    broken = tmp_path / "mbpp.jsonl"
    broken.write_text(json.dumps({"task_id": 1, "text": "t", "code": "c"}) + "\n")
    with pytest.raises(ConfigError, match=r"env.data_path: .*mbpp.jsonl: line 1: missing field 'test_list'"):
        build_env(CodingConfig(source="mbpp", data_path=str(broken)))
    with pytest.raises(ConfigError, match=r"env.data_path: .*does not exist"):
        build_env(CodingConfig(source="apps", data_path=str(tmp_path / "missing.jsonl")))


@pytest.mark.parametrize(
    "env, message",
    [
        ({"name": "coding", "timeout_s": 0}, "env.timeout_s: Input should be greater than 0"),
        ({"name": "coding", "timeot_s": 3}, "env.timeot_s: unknown field (did you mean 'timeout_s'?)"),
        ({"name": "coding", "source": "apps"}, "env.data_path: required when source is 'apps'"),
        ({"name": "coding", "data_path": "x.jsonl"}, "env.data_path: only used with source codecontests"),
        ({"name": "coding", "source": "leetcode"}, "env.source: Input should be"),
        ({"name": "coding", "source": "humaneval", "split_by": "template"}, "env.split_by: 'template' only applies to source 'generated'"),
        ({"name": "codnig"}, "env.name: unknown environment; expected one of: sokoban, coding, household, alfworld, shop, webshop, scienceworld (got 'codnig')"),
    ],
)
def test_config_errors_name_the_field(env, message):
    with pytest.raises(ConfigError) as error:
        config_from_dict({"env": env})
    assert message in str(error.value)


@pytest.mark.slow
def test_every_reference_solution_passes_its_tests():
    for source in ("generated", "humaneval"):
        env, tasks = _env_and_tasks(source)
        for task in tasks.tasks("train") + tasks.tasks("test"):
            env.reset(task)
            observation, reward, *_ = env.step(env.expert_actions(task)[0])
            assert reward == 1.0, (task.task_id, observation)
