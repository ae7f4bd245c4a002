"""A least-recently-used store of key/value tensors keyed by the token sequence that produced them.

The native engine asks it for the cached sequence sharing the longest prefix with a new prompt and
copies that many positions of keys/values instead of recomputing them. In agent rollouts this is
where the time goes otherwise: every turn re-sends the same instructions and few-shot example, the
n samples of a task share their first prompt, and an append-only history repeats the previous
turn's prompt and completion.

Storage per entry: ``kv`` of shape ``(layers, 2, kv_heads, length, head_dim)`` (keys at index 0,
values at 1). An entry whose tokens are a prefix of a newly inserted sequence is dropped, since the
new one answers every lookup at least as well.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading positions where the 1-D token arrays ``a`` and ``b`` agree."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass
class CacheEntry:
    """Cached keys/values of ``tokens``: ``kv`` is ``(layers, 2, kv_heads, len(tokens), head_dim)``."""

    tokens: np.ndarray
    kv: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


class PrefixCache:
    """Token-prefix -> key/value store with a byte budget and LRU eviction.

    Args:
        capacity_bytes: evict least recently used entries once the stored tensors exceed this.
            0 disables the cache (every lookup misses, nothing is stored).
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = int(capacity_bytes)
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._next_key = 0
        self.nbytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, tokens: Sequence[int] | np.ndarray) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with ``tokens`` and that prefix's length
        (``(None, 0)`` when nothing matches). A hit becomes the most recently used entry."""
        query = np.asarray(tokens, dtype=np.int64)
        best_key, best_len = None, 0
        for key, entry in self._entries.items():
            length = common_prefix_length(entry.tokens, query)
            if length > best_len:
                best_key, best_len = key, length
        if best_key is None:
            return None, 0
        self._entries.move_to_end(best_key)
        return self._entries[best_key], best_len

    def insert(self, tokens: Sequence[int] | np.ndarray, make_kv: Callable[[], torch.Tensor]) -> bool:
        """Store the keys/values of ``tokens`` unless an entry already covers them.

        ``make_kv()`` is called only when the entry is actually stored and must return a tensor
        that the cache may keep (a copy, not a view of memory that will be overwritten). Entries
        whose tokens are a prefix of ``tokens`` are dropped. Returns whether it was stored.
        """
        if self.capacity_bytes == 0 or len(tokens) == 0:
            return False
        new = np.asarray(tokens, dtype=np.int64)
        for key, entry in list(self._entries.items()):
            shared = common_prefix_length(entry.tokens, new)
            if shared == len(new):  # already covered (equal or longer entry)
                self._entries.move_to_end(key)
                return False
            if shared == len(entry.tokens):  # the new sequence extends this entry
                self._drop(key)
        kv = make_kv()
        if kv.shape[3] != len(new):
            raise ValueError(f"kv covers {kv.shape[3]} positions but {len(new)} tokens were given")
        entry = CacheEntry(new, kv)
        if entry.nbytes > self.capacity_bytes:
            return False
        self._entries[self._next_key] = entry
        self._next_key += 1
        self.nbytes += entry.nbytes
        while self.nbytes > self.capacity_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1
        return True

    def clear(self) -> None:
        """Drop every entry (e.g. after the model's weights changed)."""
        self._entries.clear()
        self.nbytes = 0

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes
