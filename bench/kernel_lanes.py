"""The engine's attention kernel built in several shapes: vector width (lanes) and vectors of query rows per task.

    .venv/bin/python bench/kernel_lanes.py [--builds "LANES=8,ROW_VECTORS=1" "LANES=8" ...] [--repeats 7]

``csrc/ragged_attention.cpp`` puts one query row in each lane of a GCC vector type; by default the
width is the machine's widest vector (16 floats with AVX-512, 8 with AVX2, else 4), and a group
of more rows than one vector holds is attended two vectors of rows per task. Each ``--builds``
value lists macros without their ``LEAFE_`` prefix: ``"LANES=8,ROW_VECTORS=1"`` compiles the kernel
with ``-DLEAFE_LANES=8 -DLEAFE_ROW_VECTORS=1`` (also ``VALUE_BLOCK_FLOATS``), each in a scratch
directory, ~30-60 s apiece; the default is this machine's width with 1 and 2 row vectors. It
times, interleaved, the two workloads of the other attention benches: one decode pass of own
suffixes (``bench/own_suffix_attention.py``: 64 slots, 1 or 5 tokens each, 30 layers) and one
pass of prompt pieces (``bench/piece_attention.py``: 6 pieces of 66 tokens). On an AVX2 CPU, 16
lanes (twice the register width) took 6-9x the time of 8 (docs/BENCHMARKS.md, session 30).

Prints the median milliseconds per pass for each build and checks the builds' outputs agree.
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


def build(spec: str):
    """The kernel's ``ragged_attention`` built with ``spec``'s macros: "LANES=8,ROW_VECTORS=2" compiles
    with ``-DLEAFE_LANES=8 -DLEAFE_ROW_VECTORS=2``."""
    defines = [f"LEAFE_{part.strip()}" for part in spec.split(",") if part.strip()]
    tag = "_".join(define.split("=")[-1] for define in defines)
    module = native_kernels.compile_kernel(
        Path(tempfile.mkdtemp(prefix="leafe-lanes-")), name=f"ragged_attention_{tag}", defines=defines,
    )
    return module.ragged_attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--builds", nargs="+", default=None,
        help='macros per build, e.g. "LANES=8,ROW_VECTORS=1" "LANES=8" (default: this CPU\'s width with 1 and 2 row vectors)',
    )
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    builds = args.builds or ["ROW_VECTORS=1", "ROW_VECTORS=2"]  # at the width the kernel picks for this CPU
    ops = {spec: build(spec) for spec in builds}

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
        print(f"{name}: max |difference| between builds {difference:.2e}")
        for spec, op in ops.items():
            forms[f"{name}, {spec}"] = lambda op=op, inputs=inputs: one_pass(op, inputs)
    medians = interleaved_medians(forms, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median per pass of {LAYERS} layers:")
    for name, median in medians.items():
        print(f"{name:20s} {median * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
