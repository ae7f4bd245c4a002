"""What faulting in fresh anonymous memory costs on this machine, by three ways of doing it.

    .venv/bin/python bench/fresh_memory.py touch      # write zeros (4 KiB pages, as the engine does)
    .venv/bin/python bench/fresh_memory.py populate   # madvise(MADV_POPULATE_WRITE) first (Linux 5.14+)
    .venv/bin/python bench/fresh_memory.py thp        # transparent huge pages on the mapping, then zeros

Run each form in a fresh process, a few seconds apart, so that the memory is as new to the
process (and, in a VM, to the host) as the engine's key/value slots are on first use. Prints the
milliseconds for ``--gib`` GiB.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leafe.policy.memory import lazy_zeros  # noqa: E402

MADV_POPULATE_WRITE = 23  # linux/mman.h; not exposed by Python 3.11's mmap module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("form", choices=["touch", "populate", "thp"])
    parser.add_argument("--gib", type=float, default=2.0)
    args = parser.parse_args()
    nbytes = int(args.gib * (1 << 30)) // 4096 * 4096
    if args.form == "thp":
        buffer = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buffer.madvise(mmap.MADV_HUGEPAGE)
        tensor = torch.frombuffer(buffer, dtype=torch.float32)
    else:  # the engine's own mapping of its slots and cache (huge pages off)
        tensor = lazy_zeros((nbytes // 4,), torch.float32)
        if tensor is None:
            raise SystemExit(f"the OS refused a mapping of {args.gib:g} GiB")
    start = time.perf_counter()
    if args.form == "populate":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.madvise(tensor.data_ptr(), nbytes, MADV_POPULATE_WRITE) != 0:
            raise SystemExit(f"madvise(MADV_POPULATE_WRITE) failed: errno {ctypes.get_errno()}")
    else:
        tensor.zero_()
    print(f"{args.form}: {(time.perf_counter() - start) * 1000:.0f} ms for {args.gib:g} GiB")


if __name__ == "__main__":
    main()
