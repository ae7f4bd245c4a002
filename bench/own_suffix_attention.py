"""Decode attention over each slot's own suffix: the CPU flash kernel, batched matmuls, the engine's kernel.

    .venv/bin/python bench/own_suffix_attention.py [--repeats 12]

In a decode pass of the window-8 Sokoban workload, 64 slots decode ~2 tokens each (the last
sampled token plus draft tokens being verified) past a 210-token prefix they share; each slot's own
suffix averages ~333 positions (docs/BENCHMARKS.md, session 27). Recorded over a whole run
(session 28), 74% of decoding slots carry 5 tokens (4 drafts) and 26% carry 1. The shared prefix is read once;
the own suffixes are read by a few calls over contiguous slot ranges (``split_rows``). This times
one pass's worth of those own-suffix calls (30 layers, the embedded model's 3 key-value heads of 64,
9 query heads) on slot tensors shaped like the engine's (64 slots x 1,536 positions, 4 layers'
worth cycled so the keys/values are not in cache), interleaved:

- ``flash``: the engine's calls (:class:`OwnSuffixPlan` queries and masks on the CPU flash kernel);
- ``matmul``: the same calls as two batched matmuls each (scores plus the mask, log-sum-exp, ``exp``,
  product with the values);
- ``flash-1``: the engine's calls with one query token per slot (3 rows instead of up to 15):
  what the query rows cost beyond reading the keys;
- ``read``: only summing the keys and values the calls read: the memory floor;
- ``ragged``: the engine's own kernel (:mod:`leafe.policy.native_kernels`, session 29): every
  slot's own suffix in one call per layer, no padded rows or keys, no mask (skipped where the
  kernel does not build).

Prints the median time per pass, the keys/values read (GB/s over what the calls read) and the
ratios; checks that outputs and log-sum-exps agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interleaved import attention_bench_args, interleaved_medians  # noqa: E402
from leafe.policy.native_forward import _CPU_FLASH, MAX_OWN_CHUNKS  # noqa: E402
from leafe.policy.native_kernels import ragged_attention_op  # noqa: E402
from leafe.policy.native_layout import DecodeLayout, OwnSuffixPlan, split_rows  # noqa: E402

LAYERS, SLOTS, CAPACITY, SHARED = 30, 64, 1536, 210
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def workload(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode tokens' slots and positions ``(T,)``: each slot's last position past the shared prefix
    (own suffixes of 60-610 positions, mean ~335) and 1 or 5 tokens per slot (5 for ~3 in 4)."""
    rng = np.random.default_rng(seed)
    ends = SHARED + rng.integers(60, 611, SLOTS)
    counts = rng.choice([1, 5, 5, 5], SLOTS)
    slots = np.repeat(np.arange(SLOTS), counts)
    positions = np.concatenate([np.arange(end - count + 1, end + 1) for end, count in zip(ends, counts)])
    return torch.from_numpy(slots), torch.from_numpy(positions)


def main() -> None:
    args = attention_bench_args(__doc__.splitlines()[0])
    torch.manual_seed(0)
    keys = [torch.randn(SLOTS, KV_HEADS, CAPACITY, HEAD_DIM) for _ in range(4)]
    values = [torch.randn(SLOTS, KV_HEADS, CAPACITY, HEAD_DIM) for _ in range(4)]
    slots, positions = workload(0)
    group, scale = HEADS // KV_HEADS, HEAD_DIM**-0.5
    grouped = torch.randn(len(slots), KV_HEADS, group, HEAD_DIM)

    layout = DecodeLayout(slots, positions)
    last = layout.ends.numpy()
    chunks = [(lo, hi, int(last[lo:hi].max()) + 1) for lo, hi in split_rows(last, SHARED, MAX_OWN_CHUNKS)]
    plan = OwnSuffixPlan(positions, SHARED, chunks, layout, KV_HEADS, group, torch.float32)

    def flash_pass() -> tuple[torch.Tensor, torch.Tensor]:
        for layer in range(LAYERS):
            k, v = keys[layer % 4], values[layer % 4]
            parts = [
                _CPU_FLASH(own_q, k[lo:hi, :, SHARED:end], v[lo:hi, :, SHARED:end], 0.0, False, attn_mask=mask, scale=scale)
                for (lo, hi, end), own_q, mask in zip(plan.chunks, plan.queries(grouped), plan.masks)
            ]
            out = plan.unpack(parts)
        return out

    def matmul_pass() -> tuple[torch.Tensor, torch.Tensor]:
        for layer in range(LAYERS):
            k, v = keys[layer % 4], values[layer % 4]
            parts = []
            for (lo, hi, end), own_q, mask in zip(plan.chunks, plan.queries(grouped), plan.masks):
                scores = torch.matmul(own_q, k[lo:hi, :, SHARED:end].transpose(-1, -2)).mul_(scale).add_(mask)
                lse = torch.logsumexp(scores, dim=-1)
                weights = scores.sub_(lse[..., None]).exp_()
                parts.append((torch.matmul(weights, v[lo:hi, :, SHARED:end]), lse))
            out = plan.unpack(parts)
        return out

    def first_token_pass() -> None:
        for layer in range(LAYERS):
            k, v = keys[layer % 4], values[layer % 4]
            for (lo, hi, end), own_q, mask in zip(plan.chunks, plan.queries(grouped), plan.masks):
                _CPU_FLASH(
                    own_q[:, :, :group].contiguous(), k[lo:hi, :, SHARED:end], v[lo:hi, :, SHARED:end], 0.0, False,
                    attn_mask=mask[:, :, :group], scale=scale,
                )

    def read_pass() -> None:
        for layer in range(LAYERS):
            k, v = keys[layer % 4], values[layer % 4]
            for lo, hi, end in plan.chunks:
                k[lo:hi, :, SHARED:end].sum()
                v[lo:hi, :, SHARED:end].sum()

    ragged = ragged_attention_op()
    decoding, counts = torch.unique_consecutive(slots, return_counts=True)
    first = torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    def ragged_pass() -> tuple[torch.Tensor, torch.Tensor]:
        for layer in range(LAYERS):
            out = ragged(grouped, keys[layer % 4], values[layer % 4], decoding, first, positions, SHARED, scale)
        return out

    (flash_out, flash_lse), (matmul_out, matmul_lse) = flash_pass(), matmul_pass()
    out_diff = (flash_out - matmul_out).abs().max().item()
    lse_diff = (flash_lse - matmul_lse).abs().max().item()
    forms = {"flash": flash_pass, "matmul": matmul_pass, "flash-1": first_token_pass, "read": read_pass}
    if ragged is not None:
        ragged_out, ragged_lse = ragged_pass()
        print(
            f"ragged vs flash max |difference| out {(ragged_out - flash_out).abs().max().item():.2e}, "
            f"lse {(ragged_lse - flash_lse).abs().max().item():.2e}"
        )
        forms["ragged"] = ragged_pass
    medians = interleaved_medians(forms, args.repeats)
    read = LAYERS * sum((hi - lo) * (end - SHARED) for lo, hi, end in chunks) * KV_HEADS * HEAD_DIM * 4 * 2
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(slots)} tokens in {SLOTS} slots, "
        f"{len(chunks)} calls per layer, {read / 1e9:.2f} GB of keys/values per pass; "
        f"max |difference| out {out_diff:.2e}, lse {lse_diff:.2e}"
    )
    for name, median in medians.items():
        print(f"{name:8s} {median * 1e3:7.1f} ms per pass  {read / median / 1e9:5.1f} GB/s")
    for name in [n for n in ("matmul", "flash-1", "read", "ragged") if n in medians]:
        print(f"{name} / flash: {medians[name] / medians['flash']:.3f}")


if __name__ == "__main__":
    main()
