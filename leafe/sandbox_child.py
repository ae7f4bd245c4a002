"""The code that runs inside the sandbox of :mod:`leafe.sandbox` (standard library only).

It is copied into the sandbox directory and started as ``python -S -s _leafe_sandbox.py setup
CONFIG`` with that directory as its working directory. Two stages, both trusted code:

* ``setup`` (outer process): drops root to an unprivileged uid, then (isolation
  ``namespaces``) enters new user, mount, network and PID namespaces, makes every mount
  read-only except the sandbox directory, and forks the runner, which drops every capability
  and becomes PID 1 of the new PID namespace: when it exits, the kernel kills every process
  left in the namespace. With isolation ``hooks`` the setup process becomes the runner itself.
* ``run`` (the runner): reads ``spec.json``, compiles the program once, and runs it once per job
  in a forked child (fresh namespace dict, the job's stdin, per-job CPU/memory/file-size limits,
  a wall-clock deadline enforced by killing the child's process group). After each job it
  prints one JSON line with the job's exit status, captured output and, when the program raised,
  the exception. The runner never sees expected outputs: judging happens outside the sandbox.

Exit status 125 with a ``leafe-sandbox-setup:`` line on stderr means the setup failed (e.g.
user namespaces are not allowed); :mod:`leafe.sandbox` then falls back to ``hooks``.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import random
import resource
import select
import signal
import sys
import time
import traceback

SETUP_FAILED = 125
PROGRAM_FILE = "solution.py"  # the program's filename in tracebacks
CHUNK = 65536

# Linux constants (stable kernel ABI).
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
MOUNT_ATTR_RDONLY, AT_FDCWD, AT_RECURSIVE = 0x1, -100, 0x8000
SYS_MOUNT_SETATTR = 442  # same number on every architecture (new-syscall table)
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4

# Audit events refused in ``hooks`` mode (best effort; see leafe.sandbox).
_BLOCKED_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.kill", "os.killpg",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
})
_PATH_EVENTS = frozenset({
    "os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.symlink",
    "os.link", "os.truncate", "os.utime", "os.chflags", "os.lchflags",
})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _Mount(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _enter_namespaces(sandbox_dir: str) -> None:
    """New user/mount/net/PID namespaces; everything read-only except ``sandbox_dir``."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
    _write("/proc/self/setgroups", "deny")
    # Map our own ids only: inside, the program is the same unprivileged user, not root, so
    # execve drops the namespace capabilities the creator had.
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    if os.path.isdir("/run"):  # hide host sockets (dbus, ...); harmless if it fails
        libc.mount(b"tmpfs", b"/run", b"tmpfs", 0, b"size=1m")
    target = sandbox_dir.encode()
    _check(libc.mount(target, target, None, MS_BIND | MS_REC, None), "bind the sandbox directory")
    read_only, writable = _Mount(MOUNT_ATTR_RDONLY, 0, 0, 0), _Mount(0, MOUNT_ATTR_RDONLY, 0, 0)
    size = ctypes.sizeof(_Mount)
    _check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(read_only), size), "read-only /")
    _check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, target, 0, ctypes.byref(writable), size), "writable sandbox")
    os.chdir(sandbox_dir)  # the old cwd is the directory under the new bind mount


def setup(config: dict) -> None:
    """Stage 1: drop privileges, isolate, then start the runner (see the module docstring)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if os.geteuid() == 0 and config["drop_to"] is not None:
            uid, gid = config["drop_to"]
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            _libc().prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # else /proc/self/*_map stay root-owned
        if config["isolation"] == "namespaces":
            _enter_namespaces(config["sandbox_dir"])
    except OSError as error:
        sys.stderr.write(f"leafe-sandbox-setup: {error}\n")
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
    if config["isolation"] != "namespaces":
        run(config)
        return
    sys.stdout.flush()
    child = os.fork()
    if child == 0:  # PID 1 of the new PID namespace
        code = 0
        try:
            _drop_capabilities()
            run(config)
        except BaseException:  # the runner's own failure: report it, never hang the parent
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """Give up the capabilities the namespace creator holds inside its namespaces, so the
    program cannot remount the file system writable or reconfigure the network namespace."""
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    _check(_libc().capset(ctypes.byref(header), data), "drop capabilities")


def _inside(path: object, root: str) -> bool:
    if isinstance(path, int):
        return True  # an already-open descriptor
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        return False
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep) or real == os.devnull


def _install_guards(root: str) -> None:
    """``hooks`` mode: refuse network, processes other than fork, ctypes, and writes outside ``root``."""
    blocked, path_events, write_flags = _BLOCKED_EVENTS, _PATH_EVENTS, _WRITE_FLAGS

    def guard(event: str, args: tuple) -> None:
        if event in blocked:
            raise PermissionError(f"{event} is not allowed in the sandbox")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writing = (isinstance(flags, int) and flags & write_flags) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not _inside(path, root):
                raise PermissionError(f"writing outside the sandbox directory is not allowed: {path!r}")
        elif event in path_events:
            for path in args[:2]:
                if isinstance(path, (str, bytes)) and not _inside(path, root):
                    raise PermissionError(f"{event} outside the sandbox directory is not allowed: {path!r}")

    sys.addaudithook(guard)


def _error_report(error: BaseException, in_epilogue: bool) -> dict:
    lineno = None
    for frame, line in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename == PROGRAM_FILE:
            lineno = line
    if isinstance(error, SyntaxError) and error.filename == PROGRAM_FILE:
        lineno = error.lineno
    message = str(error)
    return {"type": type(error).__name__, "message": message[:2000], "lineno": lineno,
            "in_epilogue": in_epilogue, "errno": getattr(error, "errno", None)}


def _job_child(code, epilogue, job: dict, spec: dict, fds: dict, isolation: str) -> None:
    """In the forked child: wire the job's stdin/stdout/stderr, set limits, run the program."""
    report = {"completed": False, "error": None, "exit_code": 0}
    exit_code = 0
    me = os.getpid()  # processes the program forks run this code too, but must not report
    try:
        os.setpgid(0, 0)
        os.dup2(fds["stdin"], 0)
        os.dup2(fds["stdout"], 1)
        os.dup2(fds["stderr"], 2)
        report_fd = fds["report"]
        for fd in fds.values():
            if fd not in (0, 1, 2, report_fd):
                os.close(fd)
        cpu = max(1, int(-(-spec["cpu_seconds"] // 1)))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (spec["memory_bytes"], spec["memory_bytes"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (spec["file_size_bytes"], spec["file_size_bytes"]))
        random.seed(spec["seed"])
        sys.argv = [PROGRAM_FILE]
        if isolation != "namespaces":
            _install_guards(os.getcwd())
        namespace = {"__name__": "__main__" if job["as_main"] else "solution", "__builtins__": builtins}
        in_epilogue = False
        try:
            exec(code, namespace)
            if epilogue is not None:
                in_epilogue = True
                exec(epilogue, namespace)
            report["completed"] = True
        except SystemExit as stop:
            exit_code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if stop.code is not None and not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
            report["completed"] = epilogue is None
        except BaseException as error:  # the program's own failure, reported to the judge
            exit_code = 1
            report["error"] = _error_report(error, in_epilogue)
            frames = [entry for entry in traceback.extract_tb(error.__traceback__) if entry.filename in (PROGRAM_FILE, "<test>")]
            sys.stderr.write("Traceback (most recent call last):\n" + "".join(traceback.format_list(frames)))
            sys.stderr.write("".join(traceback.format_exception_only(type(error), error)))
        report["exit_code"] = exit_code
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if os.getpid() == me:
            os.write(report_fd, json.dumps(report).encode())
    finally:
        os._exit(exit_code & 0xFF)


def _reap_orphans() -> None:
    """As PID 1 the runner inherits the program's orphans; collect their exit statuses."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_job(code, epilogue, job: dict, spec: dict, isolation: str) -> dict:
    """Run one job in a forked child; returns its JSON-ready result."""
    stdin_fd = os.memfd_create("stdin")
    os.write(stdin_fd, job["stdin"].encode())
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    rep_r, rep_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        for fd in (out_r, err_r, rep_r):
            os.close(fd)
        _job_child(code, epilogue, job, spec, {"stdin": stdin_fd, "stdout": out_w, "stderr": err_w, "report": rep_w}, isolation)
    for fd in (stdin_fd, out_w, err_w, rep_w):
        os.close(fd)
    keep, hard_cap = spec["output_bytes"], spec["output_bytes"] * 64
    captured = {out_r: bytearray(), err_r: bytearray(), rep_r: bytearray()}
    totals = dict.fromkeys(captured, 0)
    open_fds = set(captured)
    deadline = started + spec["wall_seconds"]
    status = None
    timed_out = output_limit = False
    while open_fds:
        if status is None:
            reaped, raw = os.waitpid(pid, os.WNOHANG)
            if reaped:
                status = raw
                _kill_group(pid)  # background children must not hold the pipes open
        now = time.monotonic()
        if status is None and now >= deadline:
            timed_out = True
            _kill_group(pid)
        elif status is None and sum(totals[fd] for fd in (out_r, err_r)) > hard_cap:
            output_limit = True
            _kill_group(pid)
        ready, _, _ = select.select(list(open_fds), [], [], 0.0 if status is not None else min(0.02, max(0.0, deadline - now)))
        if status is not None and not ready:
            break  # exited and nothing left to read
        for fd in ready:
            data = os.read(fd, CHUNK)
            if not data:
                open_fds.discard(fd)
                continue
            totals[fd] += len(data)
            room = (keep if fd != rep_r else 1 << 20) - len(captured[fd])
            if room > 0:
                captured[fd] += data[:room]
    for fd in captured:
        os.close(fd)
    if status is None:
        _, status = os.waitpid(pid, 0)
    _kill_group(pid)
    _reap_orphans()
    try:
        report = json.loads(captured[rep_r].decode()) if captured[rep_r] else None
    except ValueError:
        report = None  # the program wrote garbage into the report pipe
    exit_code = os.waitstatus_to_exitcode(status)
    return {
        "exit_code": exit_code if exit_code >= 0 else None,
        "signal": -exit_code if exit_code < 0 else None,
        "timed_out": timed_out,
        "output_limit": output_limit,
        "stdout": captured[out_r].decode("utf-8", "replace"),
        "stderr": captured[err_r].decode("utf-8", "replace"),
        "stdout_truncated": totals[out_r] > keep,
        "stderr_truncated": totals[err_r] > keep,
        "report": report,
        "seconds": round(time.monotonic() - started, 4),
    }


def _tasks_of(uid: int) -> int:
    """Processes and threads of ``uid`` on the machine (what RLIMIT_NPROC counts)."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1").strip())
    return count


def run(config: dict) -> None:
    """Stage 2: run every job of ``spec.json`` and print one JSON line per job."""
    libc = _libc()
    if config["isolation"] == "namespaces":
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # setup killed -> whole namespace dies
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # the program may not ptrace or read the runner
    with open("spec.json") as handle:
        spec = json.load(handle)
    os.remove("spec.json")
    # Namespaces: the count is per (user namespace, uid), i.e. this sandbox only: setup, runner,
    # then the program's own processes. Hooks: it counts every process of the uid on the machine.
    others = 2 if config["isolation"] == "namespaces" else _tasks_of(os.getuid())
    nproc = others + spec["max_processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    try:
        code = compile(spec["program"], PROGRAM_FILE, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as error:
        print(json.dumps({"compile_error": _error_report(error, False)}), flush=True)
        return
    for index, job in enumerate(spec["jobs"]):
        epilogue = compile(job["epilogue"], "<test>", "exec", dont_inherit=True) if job["epilogue"] else None
        result = _run_job(code, epilogue, job, spec, config["isolation"])
        result["index"] = index
        print(json.dumps(result), flush=True)
        failed = result["exit_code"] != 0 or result["timed_out"] or (result["report"] or {}).get("error")
        if spec["stop_on_error"] and failed:
            return


if __name__ == "__main__":
    setup(json.loads(sys.argv[2]))
