"""keep_freed_memory: glibc keeps freed blocks mapped, so a repeated allocation pattern stops faulting."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import json, resource, torch
from leafe.policy.memory import keep_freed_memory
applied = keep_freed_memory()
again = keep_freed_memory()
def cycle():  # eight 20 MiB blocks held together, then freed (like a round of cache entries)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.empty(20 << 20, dtype=torch.uint8).fill_(1) for _ in range(8)]
    del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "again": again, "faults": [cycle() for _ in range(6)]}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LEAFE_KEEP_FREED_MEMORY"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    tuned, default = _probe(), _probe(LEAFE_KEEP_FREED_MEMORY="0")
    assert tuned["applied"] and tuned["again"] and not default["applied"]
    pages = 8 * (20 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert tuned["faults"][0] > pages // 2  # the first round maps fresh memory either way
    # Later rounds reuse the freed blocks (the second may still map some: where a block lands
    # depends on the first round's layout). glibc's default returns them to the kernel or maps
    # them anew for several rounds before its thresholds adapt (seen here: 2 to 5 more rounds).
    faults = (tuned["faults"], default["faults"])
    assert sum(tuned["faults"][2:]) <= pages // 4, faults
    assert sum(tuned["faults"][1:]) < sum(default["faults"][1:]), faults


def test_own_malloc_settings_leave_the_allocator_alone() -> None:
    assert _probe(MALLOC_TRIM_THRESHOLD_="1000000")["applied"] is False


TRIM_PROBE = """
import json, torch
from leafe.policy.memory import give_back_freed_memory, keep_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
keep_freed_memory()
held = [torch.empty(20 << 20, dtype=torch.uint8).fill_(1) for _ in range(40)]  # 800 MiB of heap blocks
keep = torch.ones(1)  # allocated last: the freed blocks below it are not at the heap's top
del held
kept = rss()
give_back_freed_memory()
print(json.dumps({"kept": kept, "after": rss()}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/statm"), reason="glibc, Linux")
def test_freed_heap_is_handed_back_between_phases() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LEAFE_KEEP_FREED_MEMORY"}
    out = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE], env=clean, capture_output=True, text=True, check=True, timeout=120
    )
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    assert sizes["kept"] - sizes["after"] > 600, sizes  # most of the 800 MiB goes back to the OS
