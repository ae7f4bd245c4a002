"""The engine's attention kernel built for several vector widths: query rows per task (lanes).

    .venv/bin/python bench/kernel_lanes.py [--lanes 16 8 4] [--repeats 7]

``csrc/ragged_attention.cpp`` puts one query row in each lane of a GCC vector type; by default the
width is the machine's widest vector (16 floats with AVX-512, 8 with AVX2, else 4). This builds
the kernel once per ``--lanes`` value (``-DLEAFE_LANES=n``, each in a scratch directory, ~30-60 s
apiece) and times, interleaved, the two workloads of the other attention benches: one decode
pass of own suffixes (``bench/own_suffix_attention.py``: 64 slots, 1 or 5 tokens each, 30 layers)
and one pass of prompt pieces (``bench/piece_attention.py``: 6 pieces of 66 tokens). On an AVX2
CPU, 16 lanes (twice the register width) took 6-9x the time of 8 (docs/BENCHMARKS.md, session 30).

Prints the median milliseconds per pass for each width and checks the widths' outputs agree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interleaved import interleaved_medians  # noqa: E402
from own_suffix_attention import CAPACITY, HEAD_DIM, HEADS, KV_HEADS, LAYERS, SHARED, SLOTS, workload  # noqa: E402
from piece_attention import COUNT, STARTS  # noqa: E402

from leafe.policy import native_kernels  # noqa: E402


def build(lanes: int):
    """The kernel's ``ragged_attention`` built with ``lanes`` query rows per task."""
    from torch.utils.cpp_extension import load

    module = load(
        name=f"ragged_attention_{lanes}_lanes", sources=[str(native_kernels.SOURCE)],
        extra_cflags=[*native_kernels.CFLAGS, f"-DLEAFE_LANES={lanes}"], extra_ldflags=list(native_kernels.LDFLAGS),
        build_directory=tempfile.mkdtemp(prefix="leafe-lanes-"), verbose=False,
    )
    return module.ragged_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, nargs="+", default=[16, 8, 4])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    ops = {lanes: build(lanes) for lanes in args.lanes}

    torch.manual_seed(0)
    keys = [torch.randn(SLOTS, KV_HEADS, CAPACITY, HEAD_DIM) for _ in range(4)]  # 4 layers' slots, cycled
    values = [torch.randn(SLOTS, KV_HEADS, CAPACITY, HEAD_DIM) for _ in range(4)]
    group, scale = HEADS // KV_HEADS, HEAD_DIM**-0.5
    slots, positions = workload(0)
    decoding, counts = torch.unique_consecutive(slots, return_counts=True)
    own = (torch.randn(len(slots), KV_HEADS, group, HEAD_DIM), decoding, torch.cat([counts.new_zeros(1), counts.cumsum(0)]), positions, SHARED)
    pieces = (
        torch.randn(len(STARTS) * COUNT, KV_HEADS, group, HEAD_DIM), torch.arange(20, 20 + len(STARTS)),
        torch.arange(len(STARTS) + 1) * COUNT, torch.cat([torch.arange(s, s + COUNT) for s in STARTS]), 0,
    )

    def one_pass(op, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        q, group_slot, first, last, start = inputs
        for layer in range(LAYERS):
            out = op(q, keys[layer % 4], values[layer % 4], group_slot, first, last, start, scale)
        return out

    forms = {}
    for name, inputs in (("own suffix", own), ("pieces", pieces)):
        outputs = [one_pass(op, inputs) for op in ops.values()]
        difference = max(max((o - outputs[0][0]).abs().max().item(), (l - outputs[0][1]).abs().max().item()) for o, l in outputs)
        print(f"{name}: max |difference| between widths {difference:.2e}")
        for lanes, op in ops.items():
            forms[f"{name}, {lanes} lanes"] = lambda op=op, inputs=inputs: one_pass(op, inputs)
    medians = interleaved_medians(forms, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median per pass of {LAYERS} layers:")
    for name, median in medians.items():
        print(f"{name:20s} {median * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
