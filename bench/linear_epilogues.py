"""The MLP and residual adds of a layer, with the elementwise work in oneDNN's linear epilogues or not.

    .venv/bin/python bench/linear_epilogues.py [--repeats 15] [--rows 64 200 400]

A candidate for the native engine (not adopted, see docs/BENCHMARKS.md, session 23). It times,
per pass of ``rows`` tokens through 30 layers shaped like the embedded model (hidden 576,
intermediate 1,536; each layer's own weights, so they stream from memory as in the engine), the
part of each layer after attention:

- ``engine``: what ``LlamaFamilyForward._finish_layer`` runs now: ``o_proj``, a residual add, the
  fused gate/up product on oneDNN's reordered weights, ``silu(gate) * up``, ``down_proj``, a
  residual add;
- ``epilogues``: the same products with the elementwise work fused into them
  (``torch.ops.mkldnn._linear_pointwise``): ``o_proj`` with "add" of the residual, the gate product
  with "swish", the up product with "mul" by the gate, ``down_proj`` with "add" of the residual.

The RMSNorm between them runs in both. Prints the median time per pass of each form, their ratio,
and the largest difference between their outputs.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import torch.nn.functional as F

from interleaved import interleaved_medians  # bench/, the script's own directory

LAYERS, HIDDEN, INTERMEDIATE = 30, 576, 1536


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 200, 400])
    args = parser.parse_args()
    reorder = torch.ops.mkldnn._reorder_linear_weight
    pointwise = torch.ops.mkldnn._linear_pointwise
    torch.manual_seed(0)
    layers = []
    for _ in range(LAYERS):
        o = torch.randn(HIDDEN, HIDDEN) * HIDDEN**-0.5
        gate, up = (torch.randn(INTERMEDIATE, HIDDEN) * HIDDEN**-0.5 for _ in range(2))
        down = torch.randn(HIDDEN, INTERMEDIATE) * INTERMEDIATE**-0.5
        norm = torch.ones(HIDDEN)
        layers.append({
            "o": reorder(o), "gate_up": reorder(torch.cat([gate, up])), "gate": reorder(gate), "up": reorder(up),
            "down": reorder(down), "norm": norm,
        })

    def engine(h: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        for w in layers:
            h = h + pointwise(attended, w["o"], None, "none", [], "")
            x = F.rms_norm(h, (HIDDEN,), w["norm"], 1e-5)
            gate, up = pointwise(x, w["gate_up"], None, "none", [], "").chunk(2, dim=-1)
            h = h + pointwise(F.silu(gate) * up, w["down"], None, "none", [], "")
        return h

    def epilogues(h: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        for w in layers:
            h = pointwise.binary(attended, h, w["o"], None, "add")
            x = F.rms_norm(h, (HIDDEN,), w["norm"], 1e-5)
            gate = pointwise(x, w["gate"], None, "swish", [], "")
            h = pointwise.binary(pointwise.binary(x, gate, w["up"], None, "mul"), h, w["down"], None, "add")
        return h

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with torch.no_grad():
        for rows in args.rows:
            h, attended = torch.randn(rows, HIDDEN), torch.randn(rows, HIDDEN)
            difference = (engine(h, attended) - epilogues(h, attended)).abs().max().item()
            forms = {name: partial(form, h, attended) for name, form in (("engine", engine), ("epilogues", epilogues))}
            medians = interleaved_medians(forms, args.repeats)
            print(
                f"rows {rows:4d}: engine {medians['engine'] * 1e3:7.1f} ms, epilogues {medians['epilogues'] * 1e3:7.1f} ms,"
                f" epilogues / engine {medians['epilogues'] / medians['engine']:.3f}, max |difference| {difference:.2e}"
            )


if __name__ == "__main__":
    main()
