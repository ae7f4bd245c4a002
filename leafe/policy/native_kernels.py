"""The native engine's own CPU attention kernel, compiled on first use and cached.

``csrc/ragged_attention.cpp`` attends ragged groups of query rows, each group against its own
slot's keys and values, in float32: every decoding slot's own suffix (its last token and drafts)
in one call per layer, and every prompt piece in another, with no padded rows or keys and
no mask tensor. The CPU flash kernel it replaces there needs equal-sized calls (padded rows and
keys, an additive mask) and runs its small products at a fraction of the machine's peak. On the
window-8 rollout workload the kernel took 0.34x the flash calls' time for the own suffixes and
0.93x for the pieces, and the whole rollouts 0.83-0.89x, on an AVX-512 Zen 4; 0.43x, 1.02x and
0.93-0.94x on an AVX2 Zen 3 (docs/BENCHMARKS.md, sessions 29 and 30). Since session 31 a
group of more rows than one vector holds is attended two vectors of rows per task, and the
threads take tasks costliest first: 0.36x and 0.77x of flash's time on the Zen 3's own-suffix
and piece passes, while the whole window-8 rollouts stayed at 0.93x (window 1: 0.89-0.90x,
from 0.99x).
Results equal the flash kernel's up to float rounding (exp is a degree-6 polynomial; sums run in
another order).

The source is compiled with ``torch.utils.cpp_extension`` for this machine (``-march=native``),
once, into ``$LEAFE_CACHE/kernels/<hash>/``; the hash covers the source, the flags, torch's version
and the CPU's model and flags, so a cache shared by several machines never loads code built for
another CPU. Compiling takes ~30 s and needs a C++ compiler, the Python headers and ninja
(a dependency). Where any of it fails, or with ``LEAFE_NATIVE_KERNELS=0``, :func:`ragged_attention_op`
returns None and the engine keeps the flash kernel; the failure is logged once. Each new build
deletes the builds no process has loaded for ``STALE_DAYS`` days.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "ragged_attention.cpp"
# Tuples: torch.utils.cpp_extension.load appends its own flags to the lists it is given, which would
# change build_directory()'s hash for the rest of the process; it gets copies.
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-mprefer-vector-width=512")
LDFLAGS = ("-fopenmp",)
HEAD_DIMS = (64, 128)  # the head sizes the kernel is built for
MODULE = "leafe_ragged_attention"
STALE_DAYS = 30  # builds no process loaded for this long are deleted at the next build

_loaded: dict[str, Callable | None] = {}


def _cpu_identity() -> str:
    """The CPU's model name and flags (Linux), else the platform's processor string."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(wanted)))


def build_directory() -> Path:
    """Where this machine's build of the kernel lives (see the module docstring)."""
    from leafe.policy.embedded import cache_root

    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS + LDFLAGS).encode(), torch.__version__.encode(), _cpu_identity().encode()):
        digest.update(part)
        digest.update(b"\0")
    return cache_root() / "kernels" / digest.hexdigest()[:16]


def _prune_stale(kernels: Path, keep: Path, max_age_days: float = STALE_DAYS) -> None:
    """Delete the builds under ``kernels`` other than ``keep`` that no process loaded in
    ``max_age_days`` (each load touches its library): those of older sources, torch versions or
    CPUs. A build still in use elsewhere is younger than that, and a deleted one is rebuilt."""
    cutoff = time.time() - max_age_days * 86400
    for build in kernels.iterdir():
        library = build / f"{MODULE}.so"
        try:
            used = (library if library.exists() else build).stat().st_mtime
        except OSError:
            continue
        if build != keep and build.is_dir() and used < cutoff:
            shutil.rmtree(build, ignore_errors=True)


def compile_kernel(directory: Path, name: str = MODULE, defines: Sequence[str] = ()) -> ModuleType:
    """Compile the kernel in ``directory`` and load it as module ``name``, with extra macro
    ``defines`` ("LEAFE_LANES=8": the variants bench/kernel_lanes.py compares); no caching."""
    from torch.utils.cpp_extension import load

    return load(
        name=name, sources=[str(SOURCE)], extra_cflags=[*CFLAGS, *(f"-D{define}" for define in defines)],
        extra_ldflags=list(LDFLAGS), build_directory=str(directory), verbose=False,
    )


def _built_or_build(directory: Path) -> ModuleType:
    """The compiled module from ``directory``, built there first if it is not.

    Each build runs in a directory of its own, and the library is moved into place only when it
    is complete: processes building at once do not wait on each other, and a build killed half
    way leaves nothing behind that the next one would trust (or a stale lock that it would wait on
    forever, as a shared ``torch.utils.cpp_extension`` build directory can)."""
    library = directory / f"{MODULE}.so"
    if not library.exists():
        directory.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
        try:
            module = compile_kernel(scratch)
            built = scratch / f"{MODULE}.so"
            if built.exists():  # (torch renames a second build of one name in a process: keep none)
                os.replace(built, library)
                _prune_stale(directory.parent, keep=directory)
            return module
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    try:
        os.utime(library)  # the time of its last load, which _prune_stale reads
    except OSError:  # a read-only cache: loading is all that matters
        pass
    spec = importlib.util.spec_from_file_location(MODULE, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ragged_attention_op() -> Callable | None:
    """The compiled ``ragged_attention(q, keys, values, group_slot, group_first, last, start, scale)
    -> (out, lse)`` (shapes in ``csrc/ragged_attention.cpp``), or None where it cannot be built
    or is turned off (``LEAFE_NATIVE_KERNELS=0``). Builds at most once per process."""
    if "ragged" in _loaded:
        return _loaded["ragged"]
    op = None
    if os.environ.get("LEAFE_NATIVE_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        _loaded["ragged"] = None
        return None
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        logger.info("native attention kernel: built only on x86-64 Linux; using the flash kernel")
    else:
        try:
            op = _built_or_build(build_directory()).ragged_attention
        except Exception as error:  # noqa: BLE001 - any build failure falls back to the flash kernel
            logger.warning(
                "native attention kernel: could not build %s (%s: %s); using the flash kernel "
                "(a C++ compiler, the Python headers and ninja are needed)",
                SOURCE.name, type(error).__name__, str(error).strip().splitlines()[-1][:300] if str(error).strip() else "",
            )
    _loaded["ragged"] = op
    return op
