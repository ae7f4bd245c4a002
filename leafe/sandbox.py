"""Run untrusted Python programs in a separate, limited process.

    result = run_python("print(int(input()) * 2)", [Job(stdin="21")], SandboxLimits(wall_seconds=2))
    result.jobs[0].stdout     # "42\\n"

A call compiles the program once and runs it once per :class:`Job` (its stdin, then optionally
an epilogue, e.g. test assertions, in the program's namespace), each run in a fresh forked
process. Results come back as typed :class:`JobResult` objects: exit status, signal, captured
stdout/stderr (truncated), the exception the program raised, and which limit it hit, if any.

What is enforced, for every run of the program (see :mod:`leafe.sandbox_child` for the code):

* CPU time (``RLIMIT_CPU``), address space (``RLIMIT_AS``), size of written files
  (``RLIMIT_FSIZE``), and a wall-clock deadline after which the whole process group is killed;
* the number of processes (``RLIMIT_NPROC``), which needs a non-root uid: when leafe runs as
  root the sandbox drops to ``nobody`` (and so needs an interpreter that ``nobody`` can run,
  e.g. ``/usr/bin/python3``; :func:`sandbox_status` says which one is used);
* a fresh temporary working directory (also ``HOME`` and ``TMPDIR``), deleted afterwards, and a
  minimal environment with a fixed hash seed and ``random`` seeded per run (reproducible output).

Isolation, reported by :func:`sandbox_status` and on every :class:`SandboxResult`:

* ``namespaces`` (used when the kernel allows unprivileged user namespaces, as on Debian and on
  this project's machines): new user, mount, network and PID namespaces. The network namespace
  has only a loopback device that is down, so no address is reachable (host loopback included).
  Every mount is read-only except the sandbox directory (``/run`` is hidden by an empty tmpfs):
  writing anywhere else fails with ``EROFS``, whatever the program does (ctypes, subprocesses);
  device files the sandbox user may open (``/dev/null``) stay writable.
  The runner is PID 1 of the PID namespace, so when it ends, every process the program left
  behind (fork bombs, daemons that called ``setsid``) is killed by the kernel. Not covered:
  reading files the sandbox user can read; connecting to filesystem Unix sockets outside
  ``/run`` that the sandbox user may write; kernel exploits.
* ``hooks`` (fallback when namespaces are refused): the same resource limits, plus Python audit
  hooks in the program's process that refuse sockets, ``exec``/``subprocess``/``os.system``,
  signals, ``ctypes``, and opening for writing (or removing/renaming) paths outside the sandbox
  directory. This is a guard against accidents, not a security boundary: audit hooks can be
  bypassed by a program written to do so. Processes that escape the process group survive until
  their CPU limit ends them, and the process limit counts all processes of the sandbox user.

Verdicts are not computed here: the runner reports outputs and exceptions, and the caller judges
them (so a program never sees expected outputs it is compared against, except those written
into an epilogue).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from leafe.sandbox_child import SETUP_FAILED

logger = logging.getLogger(__name__)

ISOLATIONS = ("namespaces", "hooks")
_CHILD_SOURCE = Path(__file__).with_name("sandbox_child.py")
_SCRIPT_NAME = "_leafe_sandbox.py"
_SETUP_SECONDS = 10.0  # allowance for interpreter start-up and namespace setup, per call
_EFBIG, _EAGAIN = 27, 11


class SandboxError(RuntimeError):
    """The sandbox machinery itself failed (not the program): the message says how."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run of the program (each job is one run).

    Attributes:
        cpu_seconds: CPU time (rounded up to whole seconds, the kernel's granularity).
        wall_seconds: wall-clock time before the run's whole process group is killed.
        memory_mb: address space (virtual memory) of each process.
        file_size_mb: largest file any process may write.
        max_processes: processes and threads the program may have, itself included.
        output_kb: stdout and stderr kept per run (the rest is counted, then dropped; a run
            that prints over 64 times this is killed).
    """

    cpu_seconds: float = 2.0
    wall_seconds: float = 4.0
    memory_mb: int = 512
    file_size_mb: int = 16
    max_processes: int = 16
    output_kb: int = 64

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds", "memory_mb", "file_size_mb", "max_processes", "output_kb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Job:
    """One run of the program.

    Attributes:
        stdin: text fed to standard input.
        epilogue: Python code run after the program, in its namespace (e.g. test assertions);
            its exceptions are reported with ``in_epilogue=True``.
        as_main: run the program with ``__name__ == "__main__"`` (stdin/stdout programs);
            ``False`` for function-style programs, whose ``if __name__ == "__main__"`` demo code
            must not run (and wait for input).
    """

    stdin: str = ""
    epilogue: str = ""
    as_main: bool = True


@dataclass(frozen=True)
class ProgramError:
    """An exception the program (or its epilogue) raised.

    Attributes:
        type: exception class name, e.g. ``"ZeroDivisionError"``.
        message: ``str(exception)`` (truncated to 2000 characters).
        lineno: the last line of the program in the traceback (``None`` if none).
        in_epilogue: raised while the epilogue ran (e.g. a failed test assertion).
        errno: the ``errno`` of an ``OSError``, else ``None``.
    """

    type: str
    message: str
    lineno: int | None = None
    in_epilogue: bool = False
    errno: int | None = None


@dataclass(frozen=True)
class JobResult:
    """What one run did.

    Attributes:
        exit_code: the exit status, or ``None`` when a signal ended the run.
        signal: the signal that ended the run, or ``None``.
        timed_out: the wall-clock deadline passed and the run was killed.
        output_limit: the run printed so much that it was killed.
        stdout, stderr: captured output (at most ``output_kb`` each), UTF-8 with replacement.
        stdout_truncated, stderr_truncated: more was printed than kept.
        error: the exception the program raised, if any.
        completed: the program and its epilogue ran to the end (no exception, no ``sys.exit``
            before the epilogue finished, not killed).
        seconds: wall-clock duration (informative only: not reproducible).
    """

    exit_code: int | None
    signal: int | None
    timed_out: bool
    output_limit: bool
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    error: ProgramError | None
    completed: bool
    seconds: float

    @property
    def limit(self) -> str | None:
        """The limit the run hit: ``wall_time``, ``cpu_time``, ``memory``, ``file_size``,
        ``processes`` or ``output``; ``None`` when no limit was hit."""
        error = self.error
        if self.timed_out:
            return "wall_time"
        if self.output_limit:
            return "output"
        if self.signal == signal.SIGXCPU:
            return "cpu_time"
        if self.signal == signal.SIGXFSZ or (error is not None and error.errno == _EFBIG):
            return "file_size"
        if error is not None and error.type == "MemoryError":
            return "memory"
        if error is not None and error.type == "BlockingIOError" and error.errno == _EAGAIN:
            return "processes"  # fork() refused by RLIMIT_NPROC
        return None

    @property
    def ok(self) -> bool:
        """Ran to the end with exit status 0."""
        return self.completed and self.exit_code == 0


@dataclass(frozen=True)
class SandboxResult:
    """All runs of one program.

    Attributes:
        jobs: one result per job that ran, in job order.
        compile_error: the program does not compile (then no job ran).
        skipped: jobs not run (``stop_on_error`` stopped after a failed one).
        isolation: ``"namespaces"`` or ``"hooks"`` (see the module docstring).
    """

    jobs: tuple[JobResult, ...]
    compile_error: ProgramError | None
    skipped: int
    isolation: str


@dataclass(frozen=True)
class SandboxStatus:
    """How programs are isolated on this machine.

    Attributes:
        isolation: ``"namespaces"`` or ``"hooks"``.
        python: the interpreter that runs programs.
        uid: the uid programs run as.
        processes_limited: ``RLIMIT_NPROC`` is enforced (false only when running as root).
        notes: why a weaker mode is in force, if it is.
    """

    isolation: str
    python: str
    uid: int
    processes_limited: bool
    notes: tuple[str, ...] = field(default=())


def _drop_target() -> tuple[int, int] | None:
    """(uid, gid) to run programs as when leafe runs as root, else ``None``."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _world_readable(path: str) -> bool:
    """Every directory above ``path`` is searchable and ``path`` readable by any user."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & 0o004:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in real.parents)
    except OSError:
        return False


def _interpreters() -> list[str]:
    """Candidate interpreters: ours first; as root (programs then run as ``nobody``) ours only
    if ``nobody`` can run it (not e.g. pyenv under a private /root), then system ones."""
    if os.geteuid() != 0:
        return [sys.executable]
    # The resolved binary: a venv's bin/ may sit in a directory nobody cannot enter (site is off anyway).
    real = os.path.realpath(sys.executable)
    ours = [real] if _world_readable(real) and _world_readable(os.__file__) else []
    seen, found = set(), []
    for name in ours + ["/usr/bin/python3", "/usr/local/bin/python3"]:
        real = os.path.realpath(name)
        if os.access(real, os.X_OK) and real not in seen:
            seen.add(real)
            found.append(name)
    return found or [sys.executable]


def _child_env(directory: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": directory,
        "TMPDIR": directory,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",  # set iteration order and hash() are reproducible
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONSAFEPATH": "1",
        "PYTHONUTF8": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def _error(data: dict | None) -> ProgramError | None:
    if not data:
        return None
    return ProgramError(
        type=str(data.get("type", "")),
        message=str(data.get("message", "")),
        lineno=data.get("lineno"),
        in_epilogue=bool(data.get("in_epilogue", False)),
        errno=data.get("errno"),
    )


def _job_result(data: dict) -> JobResult:
    report = data.get("report") or {}
    return JobResult(
        exit_code=data["exit_code"],
        signal=data["signal"],
        timed_out=bool(data["timed_out"]),
        output_limit=bool(data["output_limit"]),
        stdout=data["stdout"],
        stderr=data["stderr"],
        stdout_truncated=bool(data["stdout_truncated"]),
        stderr_truncated=bool(data["stderr_truncated"]),
        error=_error(report.get("error")),
        completed=bool(report.get("completed", False)) and data["signal"] is None and not data["timed_out"],
        seconds=float(data["seconds"]),
    )


def _launch(
    program: str,
    jobs: Sequence[Job],
    limits: SandboxLimits,
    isolation: str,
    python: str,
    drop_to: tuple[int, int] | None,
    stop_on_error: bool,
    seed: int,
) -> SandboxResult:
    """One sandbox: write the spec, start the setup stage, collect one JSON line per job."""
    directory = tempfile.mkdtemp(prefix="leafe-sandbox-")
    try:
        shutil.copyfile(_CHILD_SOURCE, os.path.join(directory, _SCRIPT_NAME))
        spec = {
            "program": program,
            "jobs": [{"stdin": job.stdin, "epilogue": job.epilogue, "as_main": job.as_main} for job in jobs],
            "cpu_seconds": limits.cpu_seconds,
            "wall_seconds": limits.wall_seconds,
            "memory_bytes": limits.memory_mb << 20,
            "file_size_bytes": limits.file_size_mb << 20,
            "max_processes": limits.max_processes,
            "output_bytes": limits.output_kb << 10,
            "stop_on_error": stop_on_error,
            "seed": seed,
        }
        with open(os.path.join(directory, "spec.json"), "w") as handle:
            json.dump(spec, handle)
        if drop_to is not None:
            for name in (directory, os.path.join(directory, "spec.json")):
                os.chown(name, *drop_to)
        config = {"isolation": isolation, "drop_to": drop_to, "sandbox_dir": directory}
        process = subprocess.Popen(
            [python, "-S", "-s", os.path.join(directory, _SCRIPT_NAME), "setup", json.dumps(config)],
            cwd=directory,
            env=_child_env(directory),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = _SETUP_SECONDS + len(jobs) * (limits.wall_seconds + 1.0)
        killed = False
        try:
            out, err = process.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            killed = True
            _kill_group(process.pid)
            out, err = process.communicate()
        finally:
            if isolation != "namespaces":  # namespaces: the kernel already killed the rest
                _kill_group(process.pid)
        return _parse(out, err, process.returncode, len(jobs), isolation, killed)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _parse(out: bytes, err: bytes, returncode: int, num_jobs: int, isolation: str, killed: bool) -> SandboxResult:
    stderr = err.decode("utf-8", "replace").strip()
    if returncode == SETUP_FAILED and "leafe-sandbox-setup:" in stderr:
        raise SandboxError(stderr.splitlines()[-1])
    results: list[JobResult] = []
    compile_error = None
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            raise SandboxError(f"unreadable line from the sandbox runner: {line[:200]!r}") from None
        if "compile_error" in data:
            compile_error = _error(data["compile_error"])
        else:
            results.append(_job_result(data))
    finished = compile_error is not None or len(results) == num_jobs
    stopped = bool(results) and not results[-1].ok and returncode == 0
    if not finished and not stopped:
        how = "was killed at its overall deadline" if killed else f"exited with status {returncode}"
        raise SandboxError(f"the sandbox runner {how} after {len(results)} of {num_jobs} runs: {stderr[-500:]}")
    return SandboxResult(tuple(results), compile_error, num_jobs - len(results) if compile_error is None else num_jobs, isolation)


@functools.cache
def _probe(isolation: str) -> tuple[SandboxStatus, tuple[int, int] | None]:
    """Find a working (isolation, interpreter, uid) by running a trivial program (cached)."""
    modes = ISOLATIONS if isolation == "auto" else (isolation,)
    notes: list[str] = []
    drop_options = [_drop_target()] + ([None] if os.geteuid() == 0 else [])
    for drop_to in drop_options:
        for mode in modes:
            for python in _interpreters():
                try:
                    result = _launch("print('ok')", [Job()], SandboxLimits(), mode, python, drop_to, False, 0)
                except (SandboxError, OSError) as error:
                    notes.append(f"{mode} with {python} as uid {drop_to[0] if drop_to else os.geteuid()}: {error}")
                    continue
                if result.jobs and result.jobs[0].stdout == "ok\n":
                    uid = drop_to[0] if drop_to else os.geteuid()
                    status = SandboxStatus(mode, python, uid, uid != 0, tuple(notes))
                    if notes or uid == 0:
                        logger.warning("sandbox: using %s isolation as uid %d (%s)", mode, uid, "; ".join(notes) or "root")
                    return status, drop_to
                notes.append(f"{mode} with {python}: trivial program failed: {result.jobs[:1]}")
    raise SandboxError("no way to run sandboxed programs on this machine: " + "; ".join(notes))


def sandbox_status(isolation: str = "auto") -> SandboxStatus:
    """How programs will be isolated (``auto``: ``namespaces`` if the kernel allows, else ``hooks``)."""
    if isolation not in ("auto", *ISOLATIONS):
        raise ValueError(f"isolation must be 'auto', 'namespaces' or 'hooks', got {isolation!r}")
    return _probe(isolation)[0]


def run_python(
    program: str,
    jobs: Sequence[Job],
    limits: SandboxLimits = SandboxLimits(),
    isolation: str = "auto",
    stop_on_error: bool = False,
    seed: int = 0,
) -> SandboxResult:
    """Run ``program`` once per job in the sandbox (see the module docstring).

    Args:
        program: Python source.
        jobs: the runs (stdin, epilogue); at least one.
        limits: per-run limits.
        isolation: ``auto``, ``namespaces`` or ``hooks``.
        stop_on_error: stop after the first run that does not exit cleanly (exception, non-zero
            exit, signal, timeout); the rest are counted in ``skipped``.
        seed: ``random`` is seeded with it before each run.

    Raises:
        SandboxError: the sandbox itself failed (never for anything the program does).
    """
    if not jobs:
        raise ValueError("run_python needs at least one job")
    if isolation not in ("auto", *ISOLATIONS):
        raise ValueError(f"isolation must be 'auto', 'namespaces' or 'hooks', got {isolation!r}")
    status, drop_to = _probe(isolation)
    return _launch(program, jobs, limits, status.isolation, status.python, drop_to, stop_on_error, seed)
