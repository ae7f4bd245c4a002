"""The two ways to run a linear layer on the CPU, at the embedded model's shapes, side by side.

    .venv/bin/python bench/linear_forms.py [--repeats 30]

``F.linear(x, W)`` and the transposed product ``(W @ x^T)^T`` (what the native engine runs for
passes of 2..128 rows, leafe.policy.native_forward._linear) are the same float32 GEMM with the
operands in another order; BLAS libraries may take different code paths for the two. For each
layer shape of SmolLM2-135M (fused q/k/v, o, fused gate/up, down, LM head) and several row counts,
prints the median time of each form (interleaved calls) and whether their outputs are bitwise
equal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}
ROWS = (1, 4, 16, 64, 128, 512)


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
    print(f"{'layer':8s} {'rows':>5s} {'F.linear ms':>12s} {'(W@x^T)^T ms':>13s} {'speedup':>8s} bitwise")
    for name, (out_features, in_features) in SHAPES.items():
        weight = torch.randn(out_features, in_features)
        for rows in ROWS:
            x = torch.randn(rows, in_features)
            plain = lambda: F.linear(x, weight)  # noqa: E731
            transposed = lambda: torch.mm(weight, x.t()).t().contiguous()  # noqa: E731
            for fn in (plain, transposed):
                _time(fn, 3)  # warm-up
            a, b = [], []
            for _ in range(args.repeats):  # interleaved, so drift hits both forms alike
                a += _time(plain, 1)
                b += _time(transposed, 1)
            ta, tb = statistics.median(a), statistics.median(b)
            same = torch.equal(plain(), transposed())
            print(f"{name:8s} {rows:5d} {ta * 1e3:12.3f} {tb * 1e3:13.3f} {ta / tb:7.2f}x {same}")


if __name__ == "__main__":
    main()
