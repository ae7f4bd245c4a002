"""Memory the native engine faults in once: freed memory kept in the process instead of handed back
to the OS (glibc only), and lazily mapped zero tensors (:func:`lazy_zeros`).

The native engine allocates and frees tens of megabytes many times a second: logits and their
float64 CDF (``rows x vocab``), packed-prefill activations. (On the CPU its key/value slots and
prefix-cache entries live in stores mapped once, :func:`lazy_zeros`, where the OS grants them.)
glibc's ``malloc`` serves every request above its mmap threshold (128 KiB, rising after frees up
to 32 MiB) with fresh pages from the kernel and returns them on ``free``; the next request faults
every page in again and the kernel zeroes it. Inside a VM that first touch costs about as much as
the copy it precedes. On the 64-episode rollout benchmark, keeping freed memory cut page faults by
30-40% (4.0 to 2.8 million per run with the whole episode in the prompt) and the wall time by
about 3% (docs/BENCHMARKS.md, session 13).

:func:`keep_freed_memory` fixes the mmap threshold at glibc's ceiling (32 MiB: smaller blocks come
from the heap and are reused) and raises the trim threshold so that freed heap memory stays mapped.
The cost: freed memory stays resident, so peak RSS was 0.4-0.8 GiB higher on that benchmark.
It changes the whole process's allocator, so it can be turned off with
``LEAFE_KEEP_FREED_MEMORY=0``; it also stays off when the user set glibc's own ``MALLOC_*``
variables, and does nothing on other C libraries.
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import os
import platform
import resource
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest mmap threshold glibc accepts on 64-bit systems
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: keep up to 2 GiB of free heap mapped
_OWN_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the allocator settings of the module docstring once per process.

    Returns whether they are in effect (False: opted out, user's own ``MALLOC_*`` settings,
    not glibc, or ``mallopt`` refused).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("LEAFE_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(name in os.environ for name in _OWN_VARIABLES) or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has it
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _applied:  # pragma: no cover - glibc accepts both values
        logger.warning("glibc refused the malloc settings; freed memory goes back to the OS")
    return _applied



def give_back_freed_memory() -> None:
    """Hand the free memory glibc keeps (:func:`keep_freed_memory`) back to the OS (``malloc_trim``).

    For the gaps between phases of one process: a pipeline that trains and then loads a model
    again must not carry the training's freed heap (10.8 GiB after the quickstart's SFT) into the
    next engine, whose slots and cache are mapped apart from the heap (docs/BENCHMARKS.md, session
    21). Does nothing where :func:`keep_freed_memory` is not in effect."""
    if not _applied:
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - glibc always has it
        pass

def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_bytes() -> int:
    """Physical memory of the machine (a large default where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 1 << 40


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """A CPU tensor of zeros in an anonymous private mapping, or None where the OS refuses one.

    No page is touched here: the OS maps each page, zeroed, when it is first written, so a
    tensor far larger than what is ever written costs address space, not memory. Transparent
    huge pages are turned off for it, since one write would otherwise map 2 MiB at a time.
    """
    import torch  # (imported here: the rest of this module serves processes that never load it)

    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return None
    try:
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, TypeError, AttributeError):  # no memory for it, or not POSIX
        return None
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        try:
            buffer.madvise(mmap.MADV_NOHUGEPAGE)
        except OSError:  # a kernel without transparent huge pages: nothing to turn off
            pass
    return torch.frombuffer(buffer, dtype=dtype).view(shape)  # the tensor keeps the mapping alive
