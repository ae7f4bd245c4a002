"""Prompt-piece attention of the native engine: SDPA with ``enable_gqa``, grouped query rows, batched matmuls, its own kernel.

    .venv/bin/python bench/piece_attention.py [--repeats 12]

A packed pass of the window-8 Sokoban workload carries ~6 prompt pieces of ~66 new tokens whose
slots already hold 260-980 positions. Each layer attends every piece to its slot. This times one
pass's worth of that (30 layers, the embedded model's 9 query / 3 key-value heads of 64) in four
forms, interleaved, on slot tensors shaped like the engine's (64 slots x 1,536 positions; pieces
read a prefix of their slot):

- ``sdpa``: ``F.scaled_dot_product_attention`` per piece, ``(1, heads, n, hd)`` queries, a boolean
  causal mask, ``enable_gqa=True`` (the engine before session 19);
- ``grouped``: :meth:`LlamaFamilyForward._piece_attention`, the query heads of a key/value head as
  that head's rows, on the CPU flash kernel with an additive mask made once per pass (the engine
  now);
- ``matmul``: the same grouped rows on two batched matmuls (``baddbmm`` adding the mask, softmax,
  ``bmm``), a candidate measured against the flash kernel (docs/BENCHMARKS.md, session 23);
- ``ragged``: the engine's own kernel (:mod:`leafe.policy.native_kernels`, session 29): all the
  pieces in one call per layer, no mask tensor (skipped where the kernel does not build).

Prints the median time per pass, the attention GFLOP/s (4 x query x key positions x heads x hd,
causal part halved) and the ratios; checks that the outputs agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interleaved import attention_bench_args, interleaved_medians  # noqa: E402
from leafe.policy.native_forward import LlamaFamilyForward  # noqa: E402
from leafe.policy.native_kernels import ragged_attention_op  # noqa: E402
from leafe.policy.native_layout import causal_seen, piece_mask  # noqa: E402

LAYERS, SLOTS, CAPACITY, COUNT = 30, 64, 1536, 66
STARTS = (260, 400, 550, 700, 850, 980)


def main() -> None:
    args = attention_bench_args(__doc__.splitlines()[0])
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=576, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=9, num_key_value_heads=3,
    )
    net = LlamaFamilyForward(LlamaForCausalLM(config))
    heads, kv_heads, hd = net.num_heads, net.kv_heads, net.head_dim
    group = heads // kv_heads
    torch.manual_seed(0)
    keys = [torch.randn(SLOTS, kv_heads, CAPACITY, hd) for _ in range(4)]  # 4 layers' slots, cycled
    values = [torch.randn(SLOTS, kv_heads, CAPACITY, hd) for _ in range(4)]
    pieces = [(20 + i, start, COUNT) for i, start in enumerate(STARTS)]
    q = torch.randn(len(pieces) * COUNT, heads, hd)
    offsets = range(0, len(q), COUNT)

    def sdpa_pass() -> torch.Tensor:
        masks = [causal_seen(s, n, "cpu") for _, s, n in pieces]
        out = torch.empty_like(q)
        for layer in range(LAYERS):
            k, v = keys[layer % 4], values[layer % 4]
            for (slot, s, n), lo, mask in zip(pieces, offsets, masks):
                piece = F.scaled_dot_product_attention(
                    q[lo : lo + n].transpose(0, 1)[None], k[slot : slot + 1, :, : s + n], v[slot : slot + 1, :, : s + n],
                    attn_mask=mask, enable_gqa=True,
                )
                out[lo : lo + n] = piece[0].transpose(0, 1)
        return out

    def grouped_pass() -> torch.Tensor:
        masks = [piece_mask(s, n, group, q.dtype, "cpu") for _, s, n in pieces]
        out = torch.empty_like(q)
        for layer in range(LAYERS):
            k, v = keys[layer % 4], values[layer % 4]
            for (slot, s, n), lo, mask in zip(pieces, offsets, masks):
                net._piece_attention(q[lo : lo + n], k[slot : slot + 1, :, : s + n], v[slot : slot + 1, :, : s + n], mask, out[lo : lo + n])
        return out

    def matmul_pass() -> torch.Tensor:
        masks = [piece_mask(s, n, group, q.dtype, "cpu") for _, s, n in pieces]
        out = torch.empty_like(q)
        for layer in range(LAYERS):
            k, v = keys[layer % 4], values[layer % 4]
            for (slot, s, n), lo, mask in zip(pieces, offsets, masks):
                rows = q[lo : lo + n].view(n, kv_heads, group, hd).permute(1, 0, 2, 3).reshape(kv_heads, n * group, hd)
                scores = torch.baddbmm(mask, rows, k[slot, :, : s + n].transpose(1, 2), alpha=hd**-0.5)
                attended = torch.bmm(scores.softmax(-1), v[slot, :, : s + n])
                out[lo : lo + n].view(n, kv_heads, group, hd).copy_(attended.view(kv_heads, n, group, hd).permute(1, 0, 2, 3))
        return out

    ragged = ragged_attention_op()
    piece_slots = torch.tensor([slot for slot, _, _ in pieces])
    first = torch.tensor([0, *(COUNT * (i + 1) for i in range(len(pieces)))])
    last = torch.cat([torch.arange(s, s + n) for _, s, n in pieces])

    def ragged_pass() -> torch.Tensor:
        for layer in range(LAYERS):
            out, _ = ragged(q.view(len(q), kv_heads, group, hd), keys[layer % 4], values[layer % 4], piece_slots, first, last, 0, hd**-0.5)
        return out.view(len(q), heads, hd)

    difference = (sdpa_pass() - grouped_pass()).abs().max().item()
    print("matmul vs grouped max |difference|", (matmul_pass() - grouped_pass()).abs().max().item())
    forms = {"sdpa": sdpa_pass, "grouped": grouped_pass, "matmul": matmul_pass}
    if ragged is not None:
        print("ragged vs grouped max |difference|", (ragged_pass() - grouped_pass()).abs().max().item())
        forms["ragged"] = ragged_pass
    medians = interleaved_medians(forms, args.repeats)
    flops = LAYERS * sum(4 * n * (s + n / 2) * heads * hd for _, s, n in pieces)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; max |difference| {difference:.2e}")
    for name, median in medians.items():
        print(f"{name:8s} {median * 1e3:7.1f} ms per pass  {flops / median / 1e9:5.1f} GFLOP/s")
    print(f"grouped / sdpa: {medians['grouped'] / medians['sdpa']:.3f}")
    print(f"matmul / grouped: {medians['matmul'] / medians['grouped']:.3f}")
    if "ragged" in medians:
        print(f"ragged / grouped: {medians['ragged'] / medians['grouped']:.3f}")


if __name__ == "__main__":
    main()
