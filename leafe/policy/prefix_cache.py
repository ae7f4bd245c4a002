"""A least-recently-used store of key/value tensors keyed by the token sequence that produced them.

The native engine asks it for the cached sequence sharing the longest prefix with a new prompt and
copies that many positions of keys/values instead of recomputing them. In agent rollouts this is
where the time goes otherwise: every turn re-sends the same instructions and few-shot example, the
n samples of a task share their first prompt, and an append-only history repeats the previous
turn's prompt and completion.

Storage: one store of ``(layers, 2, kv_heads, positions, head_dim)`` (keys at index 0, values at
1) sized to the byte budget, mapped lazily on the CPU (:func:`~leafe.policy.memory.lazy_zeros`),
and each entry is a view of a run of consecutive positions in it, so an entry's ``kv`` is
``(layers, 2, kv_heads, length, head_dim)``. Runs are handed out first-fit and reused as entries
are dropped, so memory is faulted in once, up to the most the cache ever held, instead of once per
entry: each turn of each episode replaces its previous entry, and with a tensor per entry the
64-episode benchmark faulted in 4.7 GiB of fresh pages this way (7.3 s of a 96 s run on a VM,
against 2 GiB and 5.0 s now; docs/BENCHMARKS.md, session 21). An entry whose tokens are a
prefix of a newly inserted sequence is dropped, since the new one answers every lookup at least as
well.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from leafe.policy.memory import lazy_zeros, memory_bytes

logger = logging.getLogger(__name__)


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading positions where the 1-D token arrays ``a`` and ``b`` agree."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class FreeRuns:
    """First-fit allocator of runs of consecutive positions in ``0..size-1``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[list[int]] = [[0, size]] if size else []  # [start, end), sorted, never adjacent

    def take(self, length: int) -> int | None:
        """The start of a free run of ``length`` positions, now taken (None: no run is long enough)."""
        for index, (start, end) in enumerate(self._free):
            if end - start >= length:
                if end - start == length:
                    del self._free[index]
                else:
                    self._free[index][0] = start + length
                return start
        return None

    def give(self, start: int, length: int) -> None:
        """Free the run ``start..start+length-1`` (taken earlier), merging it with its neighbours."""
        end = start + length
        index = next((i for i, run in enumerate(self._free) if run[0] >= end), len(self._free))
        if index < len(self._free) and self._free[index][0] == end:
            end = self._free.pop(index)[1]
        if index > 0 and self._free[index - 1][1] == start:
            self._free[index - 1][1] = end
        else:
            self._free.insert(index, [start, end])


@dataclass
class CacheEntry:
    """Cached keys/values of ``tokens``: ``kv`` is ``(layers, 2, kv_heads, len(tokens), head_dim)``,
    positions ``start..start+len(tokens)-1`` of the cache's store."""

    tokens: np.ndarray
    kv: torch.Tensor
    start: int

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


class PrefixCache:
    """Token-prefix -> key/value store with a byte budget and LRU eviction.

    Args:
        capacity_bytes: the store's size (on the CPU at most half of the machine's memory); least
            recently used entries are evicted to make room. 0 disables the cache (every lookup
            misses, nothing is stored).
        layers, kv_heads, head_dim, dtype, device: the keys/values' geometry; the store holds
            ``capacity_bytes // (layers * 2 * kv_heads * head_dim * itemsize)`` positions. It is
            allocated at the first insert: mapped lazily on the CPU, in full on other devices. If
            that allocation fails the cache turns itself off with a warning.
    """

    def __init__(
        self,
        capacity_bytes: int,
        layers: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = int(capacity_bytes)
        self._geometry = (layers, kv_heads, head_dim, dtype, torch.device(device))
        position_bytes = 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
        budget = self.capacity_bytes if self._geometry[-1].type != "cpu" else min(self.capacity_bytes, memory_bytes() // 2)
        self._position_bytes = position_bytes
        self._runs = FreeRuns(budget // position_bytes)
        self._store: torch.Tensor | None = None
        self._entries: OrderedDict[int, CacheEntry] = OrderedDict()
        self._next_key = 0
        self.nbytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        """Whether entries can be stored (a budget of at least one position, store allocated or not
        yet tried)."""
        return self._runs.size > 0

    def match(self, tokens: Sequence[int] | np.ndarray) -> tuple[CacheEntry | None, int]:
        """The entry sharing the longest prefix with ``tokens`` and that prefix's length
        (``(None, 0)`` when nothing matches). A hit becomes the most recently used entry. Its
        ``kv`` is a view of the store: copy from it before the next :meth:`insert`, :meth:`clear`
        or :meth:`release`, which may hand its positions to another entry."""
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

    def insert(self, tokens: Sequence[int] | np.ndarray, fill: Callable[[torch.Tensor], None]) -> bool:
        """Store the keys/values of ``tokens`` unless an entry already covers them.

        ``fill(kv)`` is called only when the entry is actually stored, with its place in the store,
        ``(layers, 2, kv_heads, len(tokens), head_dim)``, and must write every position of it.
        Entries whose tokens are a prefix of ``tokens`` are dropped first. Returns whether it was
        stored (False also when the store is too small for it: then nothing is dropped). If
        ``fill`` raises, the entry is not stored and its positions stay free.
        """
        if len(tokens) == 0 or len(tokens) > self._runs.size or self._storage() is None:
            return False
        new = np.asarray(tokens, dtype=np.int64)
        for key, entry in list(self._entries.items()):
            shared = common_prefix_length(entry.tokens, new)
            if shared == len(new):  # already covered (equal or longer entry)
                self._entries.move_to_end(key)
                return False
            if shared == len(entry.tokens):  # the new sequence extends this entry
                self._drop(key)
        while (start := self._runs.take(len(new))) is None:  # evict until a run is free
            if not self._entries:  # pragma: no cover - an empty store has a run of every size
                return False
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        kv = self._store[:, :, :, start : start + len(new)]
        try:
            fill(kv)
        except BaseException:
            self._runs.give(start, len(new))
            raise
        entry = CacheEntry(new, kv, start)
        self._entries[self._next_key] = entry
        self._next_key += 1
        self.nbytes += entry.nbytes
        return True

    def clear(self) -> None:
        """Drop every entry (e.g. after the model's weights changed); the store stays allocated."""
        for key in list(self._entries):
            self._drop(key)

    def release(self) -> None:
        """Drop every entry and give the store's memory back; the next insert allocates it again."""
        self.clear()
        self._store = None

    def _storage(self) -> torch.Tensor | None:
        """The store, allocated on first use (None: the cache is off, or the allocation failed)."""
        if self._store is None and self._runs.size:
            layers, kv_heads, head_dim, dtype, device = self._geometry
            shape = (layers, 2, kv_heads, self._runs.size, head_dim)
            store = lazy_zeros(shape, dtype) if device.type == "cpu" else None
            try:
                self._store = store if store is not None else torch.empty(shape, dtype=dtype, device=device)
            except (RuntimeError, MemoryError) as error:  # torch's out-of-memory errors are RuntimeErrors
                logger.warning(
                    "prefix cache off: %.1f GiB for it could not be allocated on %s (%s); lower "
                    "policy.prefix_cache_mb", self._runs.size * self._position_bytes / 2**30, device, error
                )
                self._runs = FreeRuns(0)
        return self._store

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.nbytes -= entry.nbytes
        self._runs.give(entry.start, len(entry.tokens))
