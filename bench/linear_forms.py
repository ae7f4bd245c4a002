"""Three ways to run a linear layer on the CPU, at the embedded model's shapes, side by side.

    .venv/bin/python bench/linear_forms.py [--repeats 30]

``F.linear(x, W)`` (MKL's GEMM) and the transposed product ``(W @ x^T)^T`` are the same float32
GEMM with the operands in another order; BLAS libraries may take different code paths for the two.
The third form is oneDNN's linear on a copy of ``W`` reordered once into oneDNN's layout (the
private ops torch.compile's CPU weight prepacking uses). The native engine
(leafe.policy.native_linear.linear) runs the transposed form at 2..15 rows and the packed form
from 16 rows on, and on the LM head at any row count. For each layer shape of SmolLM2-135M (fused q/k/v, o, fused gate/up, down, LM
head) and several row counts, prints the median time of each form (interleaved calls), each fast
form's speedup over ``F.linear``, and whether its output is bitwise ``F.linear``'s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}
ROWS = (1, 4, 16, 64, 128, 300, 600)


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'layer':8s} {'rows':>5s} {'F.linear ms':>12s} {'(W@x^T)^T ms':>13s} {'oneDNN ms':>10s}"
        f" {'speedup T':>10s} {'speedup D':>10s} bitwise T/D"
    )
    for name, (out_features, in_features) in SHAPES.items():
        weight = torch.randn(out_features, in_features)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        for rows in ROWS:
            x = torch.randn(rows, in_features)
            forms = (
                lambda: F.linear(x, weight),
                lambda: torch.mm(weight, x.t()).t().contiguous(),
                lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
            )
            for fn in forms:
                _time(fn, 3)  # warm-up
            times: list[list[float]] = [[] for _ in forms]
            for _ in range(args.repeats):  # interleaved, so drift hits every form alike
                for fn, bucket in zip(forms, times):
                    bucket += _time(fn, 1)
            plain, transposed, onednn = (statistics.median(t) for t in times)
            reference = forms[0]()
            same = "/".join(str(torch.equal(reference, fn())) for fn in forms[1:])
            print(
                f"{name:8s} {rows:5d} {plain * 1e3:12.3f} {transposed * 1e3:13.3f} {onednn * 1e3:10.3f}"
                f" {plain / transposed:9.2f}x {plain / onednn:9.2f}x {same}"
            )


if __name__ == "__main__":
    main()
