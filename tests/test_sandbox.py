"""The sandbox: each limit holds against a program written to break it (real subprocesses).

Limits are proved in the isolation mode this machine uses (``namespaces`` on the project's
machines); network and file-system isolation are also proved in the ``hooks`` fallback.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from leafe.sandbox import Job, SandboxLimits, run_python, sandbox_status

FAST = SandboxLimits(cpu_seconds=1, wall_seconds=3, memory_mb=256, file_size_mb=1, max_processes=8)


def _isolation(mode: str) -> str:
    if mode == "namespaces" and sandbox_status().isolation != "namespaces":
        pytest.skip(f"user namespaces are not available here: {sandbox_status().notes}")
    return mode


@pytest.fixture
def own_sandboxes(monkeypatch) -> list[str]:
    """The sandbox directories this test creates (another test worker may run sandboxes of its
    own at the same time)."""
    made: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recorded(*args, **kwargs):
        made.append(mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recorded)
    return made


def _sandbox_processes(directories: list[str]) -> list[str]:
    """PIDs of live processes whose working directory is (or was) one of ``directories``."""
    assert any("leafe-sandbox-" in directory for directory in directories)  # the recording works
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if any(cwd.startswith(directory) for directory in directories):
                found.append(entry)
    return found


def test_each_job_runs_the_program_with_its_own_stdin_and_fresh_state():
    program = "import sys\ncount = globals().get('count', 0) + 1\nprint(int(input()) * 2, count)"
    result = run_python(program, [Job(stdin="21"), Job(stdin="5")], FAST)
    assert [job.stdout for job in result.jobs] == ["42 1\n", "10 1\n"]
    assert all(job.ok and job.limit is None for job in result.jobs)
    assert result.isolation == sandbox_status().isolation


def test_epilogue_runs_in_the_program_namespace_and_reports_failures():
    result = run_python("def add(a, b):\n    return a - b\n", [Job(epilogue="assert add(2, 2) == 4, add(2, 2)", as_main=False)], FAST)
    (job,) = result.jobs
    assert not job.ok and job.error is not None
    assert (job.error.type, job.error.message, job.error.in_epilogue) == ("AssertionError", "0", True)


def test_exception_names_the_program_line():
    (job,) = run_python("x = 1\ny = x / 0\n", [Job()], FAST).jobs
    assert job.error is not None and (job.error.type, job.error.lineno) == ("ZeroDivisionError", 2)
    assert 'File "solution.py", line 2' in job.stderr


def test_syntax_error_is_reported_without_running():
    result = run_python("def f(:\n", [Job(), Job()], FAST)
    assert result.compile_error is not None and result.compile_error.type == "SyntaxError"
    assert result.jobs == () and result.skipped == 2


def test_infinite_loop_is_stopped_by_the_cpu_limit():
    started = time.monotonic()
    (job,) = run_python("while True:\n    pass\n", [Job()], FAST).jobs
    assert job.limit == "cpu_time" and job.signal == signal.SIGXCPU
    assert time.monotonic() - started < FAST.wall_seconds + 2


def test_sleeping_program_is_killed_at_the_wall_clock_deadline():
    limits = SandboxLimits(cpu_seconds=5, wall_seconds=1)
    started = time.monotonic()
    (job,) = run_python("import time\nprint('start', flush=True)\ntime.sleep(60)\n", [Job()], limits).jobs
    assert job.timed_out and job.limit == "wall_time" and job.stdout == "start\n"
    assert time.monotonic() - started < 4


def test_fork_bomb_hits_the_process_limit_and_leaves_nothing_behind(own_sandboxes):
    assert sandbox_status().processes_limited
    bomb = "import os\nwhile True:\n    os.fork()\n"
    started = time.monotonic()
    (job,) = run_python(bomb, [Job()], FAST).jobs
    assert job.limit == "processes", job
    assert time.monotonic() - started < FAST.wall_seconds + 3
    assert _sandbox_processes(own_sandboxes) == []


def test_processes_that_escape_the_process_group_are_killed(own_sandboxes):
    _isolation("namespaces")
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')\n"
    (job,) = run_python(program, [Job()], FAST).jobs
    assert job.ok and job.stdout == "parent done\n"
    assert _sandbox_processes(own_sandboxes) == []


def test_huge_allocation_hits_the_memory_limit():
    (job,) = run_python("block = bytearray(4 << 30)\n", [Job()], FAST).jobs
    assert job.limit == "memory" and job.error is not None and job.error.type == "MemoryError"


def test_huge_file_hits_the_file_size_limit():
    program = "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (3 << 20))\n"
    (job,) = run_python(program, [Job()], FAST).jobs
    assert job.limit == "file_size", job


def test_flood_of_output_is_truncated_then_killed():
    limits = SandboxLimits(output_kb=1, wall_seconds=5)
    (job,) = run_python("while True:\n    print('x' * 1000)\n", [Job()], limits).jobs
    assert job.limit == "output" and job.stdout_truncated and len(job.stdout) == 1024


@pytest.mark.parametrize("mode", ["namespaces", "hooks"])
def test_network_is_unreachable(mode):
    """A server on the host's loopback is not reachable (and nothing else is tried)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    program = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'escaped')\n"
        "print('connected')\n"
    )
    try:
        (job,) = run_python(program, [Job()], FAST, isolation=_isolation(mode)).jobs
    finally:
        thread.join()
        server.close()
    assert accepted == [] and "connected" not in job.stdout
    assert job.error is not None
    assert job.error.type == ("PermissionError" if mode == "hooks" else "OSError"), job.error


@pytest.mark.parametrize("mode", ["namespaces", "hooks"])
def test_writing_outside_the_sandbox_is_refused(mode):
    outside = Path(tempfile.mkdtemp(prefix="leafe-test-outside-"))
    outside.chmod(0o777)  # writable by whichever uid the sandbox uses, so only isolation stops it
    target = outside / "escaped.txt"
    program = (
        "import os\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print(os.path.exists('inside.txt'), flush=True)\n"
        f"open({str(target)!r}, 'w').write('escaped')\n"
    )
    try:
        (job,) = run_python(program, [Job()], FAST, isolation=_isolation(mode)).jobs
        assert job.stdout == "True\n"  # the sandbox directory itself is writable
        assert job.error is not None and not target.exists()
        assert job.error.type == ("PermissionError" if mode == "hooks" else "OSError")
        assert mode == "hooks" or "Read-only file system" in job.error.message
    finally:
        target.unlink(missing_ok=True)
        outside.rmdir()


def test_shell_commands_cannot_write_outside_either():
    _isolation("namespaces")
    outside = Path(tempfile.mkdtemp(prefix="leafe-test-outside-"))
    outside.chmod(0o777)
    target = outside / "escaped.txt"
    program = f"import os\nprint(os.system('echo escaped > {target}') != 0)\n"
    try:
        (job,) = run_python(program, [Job()], FAST, isolation="namespaces").jobs
        assert job.stdout == "True\n" and not target.exists()
    finally:
        target.unlink(missing_ok=True)
        outside.rmdir()


def test_program_holds_no_capability_to_undo_the_read_only_mounts():
    _isolation("namespaces")
    program = (
        "import ctypes, os\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "MS_REMOUNT, MS_BIND = 32, 4096\n"
        "print(libc.mount(None, b'/', None, MS_REMOUNT | MS_BIND, None), os.strerror(ctypes.get_errno()))\n"
    )
    (job,) = run_python(program, [Job()], FAST, isolation="namespaces").jobs
    assert job.stdout.splitlines() == ["0000000000000000", "-1 Operation not permitted"], job


def test_hooks_mode_refuses_subprocesses():
    (job,) = run_python("import os\nos.system('true')\n", [Job()], FAST, isolation="hooks").jobs
    assert job.error is not None and job.error.type == "PermissionError"


@pytest.mark.parametrize("mode", ["namespaces", "hooks"])
def test_interpreter_crash_is_reported_as_a_signal(mode):
    (job,) = run_python("import faulthandler\nfaulthandler._sigsegv()\n", [Job()], FAST, isolation=_isolation(mode)).jobs
    assert job.signal == signal.SIGSEGV and job.exit_code is None and not job.ok


def test_stop_on_error_skips_the_remaining_runs():
    jobs = [Job(stdin="1"), Job(stdin="x"), Job(stdin="2")]
    result = run_python("print(int(input()))", jobs, FAST, stop_on_error=True)
    assert [job.ok for job in result.jobs] == [True, False] and result.skipped == 1
    assert len(run_python("print(int(input()))", jobs, FAST).jobs) == 3


def test_runs_are_reproducible():
    program = "import random\nprint(random.random(), set('abcdefgh'), hash('leafe'))"
    first, second = (run_python(program, [Job(), Job()], FAST) for _ in range(2))
    outputs = [job.stdout for job in first.jobs + second.jobs]
    assert len(set(outputs)) == 1


def test_bad_limits_and_arguments_are_refused():
    with pytest.raises(ValueError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)
    with pytest.raises(ValueError, match="isolation"):
        run_python("print(1)", [Job()], isolation="docker")
    with pytest.raises(ValueError, match="at least one job"):
        run_python("print(1)", [])
