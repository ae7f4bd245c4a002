"""Where the native engine's rows sit in a forward pass, and which attention calls read them.

Pure bookkeeping over positions and slots, made once per pass and shared by every layer of
:mod:`leafe.policy.native_forward`: how decode attention over each slot's own suffix is split
into calls (:func:`split_rows`), where each decode token sits when slots decode several tokens
(:class:`DecodeLayout`), the own-suffix calls' masks and row gathers (:class:`OwnSuffixPlan`),
and prompt pieces' causal masks (:func:`causal_seen`, :func:`piece_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# A kernel call's fixed cost, in (row x key position) reads: ~30 us against ~0.15 us per read.
CALL_COST = 256


def split_rows(
    positions: np.ndarray,
    start: int,
    max_chunks: int,
    call_cost: int = CALL_COST,
    holes: np.ndarray | None = None,
) -> list[tuple[int, int]]:
    """Contiguous row ranges for decode attention over key positions ``start..positions[b]``.

    One call over all ``B`` rows reads ``B x (max(positions) + 1 - start)`` key positions, the
    short rows' tails masked. Splitting the rows into ranges that each read up to their own
    longest row saves those reads at ``call_cost`` per extra call. ``holes: (B,)`` bools marks rows
    with no query (a parked or free slot below an active one): they need no call, so a range of
    holes only may be left out, and a hole inside a range adds a row but not to its width.
    Returns the at most ``max_chunks`` ranges ``[(lo, hi), ...]``, in order, covering every row
    that is not a hole, that minimize ``sum((hi - lo) x (max(positions[lo:hi] of non-holes) + 1 -
    start)) + call_cost x ranges`` (exact dynamic program; ``positions: (B,)`` ints >= start).
    """
    batch = len(positions)
    hole = np.zeros(batch, dtype=bool) if holes is None else np.asarray(holes, dtype=bool)
    width = np.where(hole, 0, np.asarray(positions, dtype=np.int64) + 1 - start)  # (B,)
    rows = np.arange(batch)
    later = rows[None, :] >= rows[:, None]  # (i, j): j >= i
    # cost[i, j]: one call over rows i..j = (j - i + 1) x max(width[i..j]) + call_cost.
    run = np.maximum.accumulate(np.where(later, width[None, :], 0), axis=1)
    never = np.iinfo(np.int64).max // 4
    cost = np.where(later, (rows[None, :] + 1 - rows[:, None]) * run + call_cost, never)
    # best[m]: the first m rows in at most k calls (k = 0 here: only if they are all holes).
    best = np.where(np.concatenate([[True], np.logical_and.accumulate(hole)]), 0, never)
    # choices[k - 1][m]: the first row of the last call, -1 (k - 1 calls do as well) or -2 (hole m - 1 left out).
    choices: list[np.ndarray] = []
    skippable = np.flatnonzero(hole) + 1
    for _ in range(max(max_chunks, 1)):
        candidate = best[:-1, None] + cost  # (i, j): rows 0..i-1 in k - 1 calls, then one over i..j
        first = candidate.argmin(axis=0)
        called = candidate[first, rows]
        better = called < best[1:]
        best, choice = best.copy(), np.full(batch + 1, -1)
        best[1:][better], choice[1:][better] = called[better], first[better]
        for m in skippable:  # in order: best[m - 1] is final when row m - 1 is considered
            if best[m - 1] < best[m]:
                best[m], choice[m] = best[m - 1], -2
        choices.append(choice)
    ranges, end, k = [], batch, len(choices)
    while end > 0 and k > 0:
        lo = int(choices[k - 1][end])
        if lo == -2:
            end -= 1
            continue
        if lo >= 0:
            ranges.append((lo, end))
            end = lo
        k -= 1
    return ranges[::-1]


def hole_runs(holes: np.ndarray | None) -> int:
    """How many runs of consecutive holes ``holes: (B,)`` has (0 for None)."""
    if holes is None or not len(holes):
        return 0
    return int(holes[0]) + int(np.count_nonzero(holes[1:] & ~holes[:-1]))


def causal_seen(start: int, count: int, device: torch.device | str) -> torch.Tensor:
    """Which positions a prompt piece's tokens see: ``(count, start + count)`` booleans, token ``j``
    (at position ``start + j``) sees ``0..start + j``."""
    return torch.arange(start + count, device=device)[None, :] <= torch.arange(start, start + count, device=device)[:, None]


def piece_mask(start: int, count: int, group: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The additive causal mask of a prompt piece's grouped query rows (see
    :meth:`LlamaFamilyForward._piece_attention`): ``(count * group, start + count)``, row
    ``j * group + g`` (the piece's ``j``-th token, head ``g`` of a key/value group) sees positions
    ``0..start + j`` (:func:`causal_seen`): 0 there, -inf past it."""
    seen = causal_seen(start, count, device)
    mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(~seen, float("-inf"))
    return mask.repeat_interleave(group, dim=0)


class DecodeLayout:
    """Where each decode token sits when a slot may decode several tokens in one pass (the last
    sampled token plus draft tokens being verified, see :mod:`leafe.policy.speculative`).

    ``slots: (T,)`` the slot of each decode token, non-decreasing; a slot's tokens take
    consecutive positions ``positions: (T,)``. A slot below the last one may have no token (a
    hole: the engine parks finished sequences in their slots). Derived:
    ``pad_index: (B, Q)`` the token index of each slot's ``j``-th query, the last one repeated
    past the slot's count (so padded queries see the same keys and stay finite; a hole's rows
    repeat the token before it, or token 0 for a hole at slot 0, and read only its own slot's
    finite keys); ``real: (T,)``
    the flat ``b * Q + j`` index of every real token; ``query_positions: (B, Q)``; ``ends:
    (B,)`` each slot's last position; ``holes: (B,)`` bools, the slots with no token.
    """

    def __init__(self, slots: torch.Tensor, positions: torch.Tensor) -> None:
        counts = torch.bincount(slots)  # (B,)
        self.batch, self.width = int(counts.shape[0]), int(counts.max())
        firsts = torch.cumsum(counts, 0) - counts
        column = torch.arange(self.width, device=slots.device)
        self.pad_index = (firsts[:, None] + torch.minimum(column[None, :], counts[:, None] - 1)).clamp_(min=0)
        self.real = torch.nonzero((column[None, :] < counts[:, None]).reshape(-1)).squeeze(-1)
        self.query_positions = positions[self.pad_index]
        self.ends = self.query_positions[:, -1]
        self.holes = counts == 0

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (T, ...)`` -> ``(B, Q, ...)``."""
        return x[self.pad_index.reshape(-1)].view(self.batch, self.width, *x.shape[1:])

    def packed(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (B, Q, ...)`` -> the real tokens' rows ``(T, ...)``."""
        return x.reshape(self.batch * self.width, *x.shape[2:])[self.real]


class OwnSuffixPlan:
    """What the flash cascade's own-suffix calls (:meth:`LlamaFamilyForward._flash_cascade_attention`)
    need that is the same in every layer of a pass: the calls, their additive masks, and where
    each token's query and output rows go. Made once per pass.

    Call ``i`` covers slots ``lo..hi-1`` (``chunks[i] = (lo, hi, end)``) with ``widths[i]``
    queries per slot: the most tokens any of its slots has this pass (with a layout; else 1), so a
    call is not padded to the widest slot of the whole batch. Its queries are ``(hi - lo,
    kv_heads, widths[i] * group, hd)``, its mask ``masks[i]: (hi - lo, 1, widths[i] * group or 1,
    end - shared)``, 0 up to each query's position and -inf past it. Holes left out of every call
    have no rows.
    """

    def __init__(
        self,
        positions: torch.Tensor,
        shared: int,
        chunks: Sequence[tuple[int, int, int]] | None,
        layout: DecodeLayout | None,
        kv_heads: int,
        group: int,
        dtype: torch.dtype,
    ) -> None:
        device = positions.device
        query_positions = positions[:, None] if layout is None else layout.query_positions  # (B, Q)
        batch, width = query_positions.shape
        span = int(query_positions.max()) + 1
        self.chunks = list(chunks or [(0, batch, span)])
        self.kv_heads, self.group = kv_heads, group
        real = torch.arange(batch, device=device) if layout is None else layout.real  # (T,): b * Q + j
        counts = torch.bincount(real // width, minlength=batch).tolist()  # tokens per slot
        self.widths = [max(1, *counts[lo:hi]) for lo, hi, _ in self.chunks]
        beyond = torch.arange(shared, span, device=device)[None, None, :] > query_positions[:, :, None]  # (B, Q, S)
        mask = torch.zeros(beyond.shape, dtype=dtype, device=device).masked_fill_(beyond, float("-inf"))
        self.masks = []
        for (lo, hi, end), w in zip(self.chunks, self.widths):
            part = mask[lo:hi, :w, : end - shared]  # (n, w, S)
            if w == 1:
                self.masks.append(part[:, None])  # (n, 1, 1, S): broadcast over the group's heads
            else:  # query row j * group + g is token j's head g
                self.masks.append(part[:, :, None, :].expand(-1, w, group, -1).reshape(hi - lo, 1, w * group, -1))
        sizes = [(hi - lo) * kv_heads * w * group for (lo, hi, _), w in zip(self.chunks, self.widths)]
        self.offsets = np.cumsum([0] + sizes)[:-1].tolist()  # each call's first query row
        self.q_index: tuple[torch.Tensor, ...] | None = None
        self.out_index: torch.Tensor | None = None
        if layout is None:
            return  # one query per slot, no holes (every slot called, in order): rows are the tokens'
        heads = torch.arange(kv_heads, device=device)
        within = torch.arange(group, device=device)
        tokens, head_of, member = [], [], []  # per query row: (token, kv head, head within the group)
        row_of_slot = torch.full((batch,), -1, dtype=torch.long, device=device)  # first row of a called slot
        slot_width = torch.zeros(batch, dtype=torch.long, device=device)  # its call's width
        for (lo, hi, _), w, first in zip(self.chunks, self.widths, self.offsets):
            pad, n = layout.pad_index[lo:hi, :w], hi - lo  # (n, w): the token of each query
            tokens.append(pad[:, None, :, None].expand(n, kv_heads, w, group).reshape(-1))
            head_of.append(heads[None, :, None, None].expand(n, kv_heads, w, group).reshape(-1))
            member.append(within.expand(n, kv_heads, w, group).reshape(-1))
            row_of_slot[lo:hi] = first + torch.arange(n, device=device) * kv_heads * w * group
            slot_width[lo:hi] = w
        self.q_index = (torch.cat(tokens), torch.cat(head_of), torch.cat(member))
        # Token t (slot b, column j) reads row first(b) + (h * w + j) * group + g of its call.
        slot, column = real // width, real % width
        base = (row_of_slot[slot] + column * group)[:, None, None]  # (T, 1, 1)
        self.out_index = base + (heads[:, None] * slot_width[slot][:, None, None] * group) + within  # (T, kv_heads, group)

    def queries(self, grouped: torch.Tensor) -> list[torch.Tensor]:
        """``grouped: (T, kv_heads, group, hd)`` -> each call's queries ``(hi - lo, kv_heads, w * group, hd)``."""
        hd = grouped.shape[-1]
        if self.q_index is None:
            return [grouped[lo:hi] for lo, hi, _ in self.chunks]
        rows = grouped[self.q_index]  # (R, hd), on any strides
        return [
            rows[first : first + (hi - lo) * self.kv_heads * w * self.group].view(hi - lo, self.kv_heads, w * self.group, hd)
            for (lo, hi, _), w, first in zip(self.chunks, self.widths, self.offsets)
        ]

    def unpack(self, parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The calls' outputs ``(hi - lo, kv_heads, w * group, hd)`` and log-sum-exps ``(hi - lo,
        kv_heads, w * group)`` -> each token's ``(T, kv_heads, group, hd)`` and ``(T, kv_heads, group)``."""
        if self.out_index is None:
            out = parts[0][0] if len(parts) == 1 else torch.cat([o for o, _ in parts])
            lse = parts[0][1] if len(parts) == 1 else torch.cat([s for _, s in parts])
            return out, lse
        hd = parts[0][0].shape[-1]
        out = torch.cat([o.reshape(-1, hd) for o, _ in parts])
        lse = torch.cat([s.reshape(-1) for _, s in parts])
        index = self.out_index.reshape(-1)
        return out.index_select(0, index).view(*self.out_index.shape, hd), lse.index_select(0, index).view(self.out_index.shape)
