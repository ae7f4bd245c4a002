"""Seeded sampling shared by every in-process backend.

Each request owns a ``torch.Generator`` seeded with its request seed and advanced by exactly one
uniform draw per generated token, so its t-th token depends only on its seed, its logits and t,
never on the batch it shares. The token is drawn by inverting the cumulative distribution in
vocabulary order:

    u ~ U[0, 1),   token = min{v : sum_{w <= v} p_w > u * sum_w p_w},
    p = softmax(filter_top_p(logits / T))

which is an exact sample of the filtered, tempered softmax. Two backends that compute the same
logits therefore draw the same tokens for the same seed. (Earlier versions used the Gumbel-max
trick, which needs a whole vocabulary of noise per token: ~0.3 ms per row and step on 2 cores, ~3%
of a rollout; one uniform per row costs next to nothing. Same seeds give other samples than then.)

The search runs in two levels (:func:`inverse_cdf`): the sums of blocks of ``CDF_BLOCK`` tokens
find the block that holds the target, and a float64 cumulative sum of that block alone finds the
token. A float64 cumulative sum over the whole vocabulary (the earlier form) writes a tensor twice
the size of the logits: 51 MB for 130 rows of a 49,152-token vocabulary, which glibc maps fresh on
every call. On the window-8 rollout benchmark the two levels cut sampling from 1.32 s to 0.60 s,
with no token changed (docs/BENCHMARKS.md, session 29); the token can differ only where a uniform
falls within float rounding of an interval's edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CDF_BLOCK = 512  # tokens per block of the two-level search (inverse_cdf)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one request; any Python int maps into the 64-bit seed range."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed) % (1 << 64))


def next_uniforms(generators: Sequence[torch.Generator], device: torch.device | str = "cpu") -> torch.Tensor:
    """The next uniform of every row: ``(len(generators),)`` float64 in [0, 1), one draw per row."""
    device = torch.device(device)
    if not generators:
        return torch.empty(0, dtype=torch.float64, device=device)
    return torch.cat([torch.rand(1, generator=g, dtype=torch.float64, device=device) for g in generators])


def filter_top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every token outside the smallest set whose probability mass reaches ``top_p``
    (the most likely token always stays). ``scores: (batch, vocab)`` -> same shape."""
    if top_p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    probs = torch.softmax(sorted_scores, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly more likely tokens
    remove_sorted = mass_before >= top_p
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token whose cumulative-probability interval holds each row's uniform.

    ``probs: (batch, vocab)`` non-negative (need not sum to 1), ``uniforms: (batch,)`` in [0, 1) ->
    ``(batch,)`` int64. Two levels (module docstring): float32 block sums, their running sum and
    the chosen block's in float64. A zero-probability token is never returned (its interval is
    empty).
    """
    batch, vocab = probs.shape
    blocks = -(-vocab // CDF_BLOCK)
    padded = F.pad(probs, (0, blocks * CDF_BLOCK - vocab)) if vocab % CDF_BLOCK else probs
    by_block = padded.reshape(batch, blocks, CDF_BLOCK)
    block_cdf = by_block.sum(dim=-1).double().cumsum_(dim=-1)  # (batch, blocks)
    targets = uniforms.to(torch.float64) * block_cdf[:, -1]
    block = torch.searchsorted(block_cdf, targets[:, None], right=True).clamp_(max=blocks - 1)  # (batch, 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp_(min=0)), 0.0)
    inside = by_block[torch.arange(batch, device=probs.device), block[:, 0]]  # (batch, CDF_BLOCK)
    cdf = inside.cumsum(dim=-1, dtype=torch.float64).add_(before)
    index = torch.searchsorted(cdf, targets[:, None], right=True)[:, 0]
    # Rounding may leave the block's own running sum just short of the target: take its last
    # token of non-zero probability then (the block has one: its sum is positive).
    last = CDF_BLOCK - 1 - (inside > 0).flip(-1).to(torch.uint8).argmax(dim=-1)
    index = torch.where(index >= CDF_BLOCK, last, index)
    return (block[:, 0] * CDF_BLOCK + index).clamp_(max=vocab - 1)


def sample_next(
    logits: torch.Tensor, generators: Sequence[torch.Generator], temperature: float, top_p: float
) -> torch.Tensor:
    """Pick each row's next token: greedy for ``temperature == 0``, else a seeded sample.

    ``logits: (batch, vocab)`` -> ``(batch,)`` int64; ``len(generators) == batch`` (unused when greedy).
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scores = filter_top_p(logits.float() / temperature, top_p)  # a new tensor: updated in place below
    # exp(s - max): the softmax up to its normalisation, which inverse_cdf does not need.
    weights = scores.sub_(scores.amax(dim=-1, keepdim=True)).exp_()
    return inverse_cdf(weights, next_uniforms(generators, logits.device))
