"""Prompt-lookup speculative decoding: draft tokens copied from the context, verified exactly.

An agent's replies repeat its context: the action format, object names from the observation, and
(with the history in the prompt) its own earlier replies. So the tokens that followed the last
occurrence of the sequence's last few tokens are a cheap guess of what comes next (Saxena's
"prompt lookup decoding"; no draft model). The engine runs the last sampled token and the draft
through the model in one pass (a slot decodes several positions at once) and keeps the draft's
longest prefix that the model itself would have sampled.

Verification is exact, not approximate: position ``j``'s token is drawn from the model's logits at
that position with the request's next uniform, by the same :func:`sample_next` as one token at a
time. Drawing stops at the first token that differs from the draft (that token is kept: it is
the model's own sample given the accepted prefix). A request therefore consumes one uniform per
kept token, in order, and for equal logits produces exactly the tokens it would produce without
drafts; the logits themselves differ from one-token decoding only by float rounding (other
matmul shapes). A wrong draft costs compute, never correctness.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from leafe.policy.sampling import sample_next

DRAFT_TOKENS = 4  # default draft length (policy.speculative_tokens); measured against 6 and 8 in docs/BENCHMARKS.md, session 19
MIN_NGRAM = 2  # the context's last tokens must recur at least this long to propose a draft
MAX_NGRAM = 4  # ... and the longest recurrence up to this length is preferred


def propose_draft(context: np.ndarray, max_tokens: int, min_ngram: int = MIN_NGRAM, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to ``max_tokens`` tokens that followed the latest earlier occurrence of the context's
    last ``n`` tokens, for the largest ``n`` in ``max_ngram..min_ngram`` that recurs; ``[]`` if
    none does.

    ``context: (L,)`` token ids (prompt + generated so far).
    """
    length = len(context)
    if max_tokens <= 0:
        return []
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(context[:-1], n)  # (L - n, n), not the tail itself
        hits = np.flatnonzero((windows == context[-n:]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n  # < L: the window ends before the last token
            return context[start : start + max_tokens].tolist()
    return []


def verify_drafts(
    logits: torch.Tensor,
    drafts: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator],
    temperature: float,
    top_p: float,
) -> list[list[int]]:
    """Each sequence's new tokens: its draft's accepted prefix plus one token of the model's own.

    ``logits: (sum(len(d) + 1 for d in drafts), vocab)``: sequence ``i`` owns ``len(drafts[i]) + 1``
    consecutive rows, row ``j`` predicting the token after draft token ``j - 1`` (row 0: after the
    last sampled token). Returns ``tokens[i]`` with ``1 <= len(tokens[i]) <= len(drafts[i]) + 1``;
    every token but the last equals the draft's, the last is where the model and draft part (or
    the token after a fully accepted draft).
    """
    firsts = np.cumsum([0] + [len(d) + 1 for d in drafts])[:-1].tolist()
    tokens: list[list[int]] = [[] for _ in drafts]
    live = list(range(len(drafts)))
    column = 0
    while live:
        rows = [firsts[i] + column for i in live]
        picked = sample_next(logits[rows], [generators[i] for i in live], temperature, top_p).tolist()
        still = []
        for i, token in zip(live, picked):
            tokens[i].append(int(token))
            if column < len(drafts[i]) and token == drafts[i][column]:
                still.append(i)
        live, column = still, column + 1
    return tokens
