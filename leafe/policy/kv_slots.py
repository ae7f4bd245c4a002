"""Key/value slots of the native engine: one fixed slot per running sequence, in every layer.

Shapes: ``keys[layer]`` and ``values[layer]`` are ``(slots, kv_heads, capacity, head_dim)``. The
engine's decode batch is the slot range ``0..B-1``, a view of these tensors, never a gather; it
keeps its active sequences packed at the bottom, with holes only where a finished sequence's slot
is parked for a step. A slot's positions past its sequence's length are stale or
zero; attention masks them (they must stay finite: a masked value is multiplied by a zero weight,
and ``0 * nan`` would poison the row).

On the CPU, the first reservation takes every slot at once and maps room for the model's whole
context behind each one (:func:`~leafe.policy.memory.lazy_zeros`): the capacity then grows by
widening a view, without copying. Each slot's positions are written with zeros, in one pass per
store, when a sequence that may reach them takes the slot (:meth:`KVSlots.prepare`), so a slot
faults in only what its own sequences need. Where such a mapping is refused (or off the CPU) the
slots are plain tensors whose capacity grows geometrically (an episode's prompt grows turn by
turn), each growth copying the sequences in flight into fresh memory.

Why: on a VM, faulting in fresh memory is most of the cost of growing. On the 64-episode rollout
benchmark the copying growth faulted in 8.2 GiB and took 12.2 s of a 96 s run; the mapped stores
fault in each slot position once (4.2 GiB, 5.9 s). Zeroing positions ahead of use is cheaper than
leaving those pages to the first writes of slot moves, prefix loads and decode steps (5.0 s
against 7.4 s in one pair of runs; docs/BENCHMARKS.md, session 21). Zeroing them per slot, up to
what the slot's sequence may reach, rather than every slot up to the longest one:
docs/BENCHMARKS.md, session 25.
"""

from __future__ import annotations

import torch

from leafe.policy.errors import RequestTooLarge
from leafe.policy.memory import lazy_zeros, memory_bytes
from leafe.policy.native_forward import LlamaFamilyForward

__all__ = ["KVSlots", "grown"]

CAPACITY_STEP = 128  # slot capacity grows in multiples of this many positions
CAPACITY_GROWTH = 1.5  # ... and by at least this factor


def grown(old: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``old`` ``(slots, kv_heads, capacity, head_dim)`` copied into a larger zero-padded tensor of
    ``shape``; every element is written once."""
    new = old.new_empty(shape)
    slots, capacity = old.shape[0], old.shape[2]
    new[:slots, :, :capacity] = old  # sequences in flight
    new[:slots, :, capacity:] = 0
    new[slots:] = 0
    return new


class KVSlots:
    """The slots of every layer (see the module docstring), allocated on first use.

    Args:
        net: the forward pass whose layers the slots serve (its shapes, dtype and device).
        max_slots: slots allocated at the first reservation (the engine's batch size).
        model_name: named in the error when a request needs more positions than the model has.
    """

    def __init__(self, net: LlamaFamilyForward, max_slots: int, model_name: str = "") -> None:
        self.net = net
        self.max_slots = int(max_slots)
        self.model_name = model_name
        self.keys: list[torch.Tensor] = []  # views (slots, kv_heads, capacity, head_dim) of the stores
        self.values: list[torch.Tensor] = []
        self._key_stores: list[torch.Tensor] = []  # (slots, kv_heads, room, head_dim), room >= capacity
        self._value_stores: list[torch.Tensor] = []
        self._written: list[int] | None = None  # mapped stores: per slot, positions faulted in so far

    @property
    def count(self) -> int:
        """Slots allocated (0 before the first reservation)."""
        return self.keys[0].shape[0] if self.keys else 0

    @property
    def capacity(self) -> int:
        """Positions per slot (0 before the first reservation)."""
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def room(self) -> int:
        """Positions per slot the stores hold: the capacity grows without copying up to this."""
        return self._key_stores[0].shape[2] if self._key_stores else 0

    def clear(self) -> None:
        """Give the memory back; the next :meth:`reserve` allocates again."""
        self.keys, self.values, self._key_stores, self._value_stores = [], [], [], []
        self._written = None

    def reserve(self, slots: int, capacity: int) -> None:
        """Make sure ``slots`` slots of ``capacity`` positions exist (allocates only when the stores
        are too small).

        Raises:
            RequestTooLarge: the model has fewer positions, or the slots would take more than half
                of the machine's memory (checked before allocating).
        """
        if capacity > self.net.max_positions:
            raise RequestTooLarge(
                f"prompt + max_new_tokens needs {capacity} positions; {self.model_name or 'the model'} "
                f"supports {self.net.max_positions} (lower policy.max_new_tokens or shorten the prompt)"
            )
        have_slots, have_capacity = self.count, self.capacity
        if have_slots >= slots and have_capacity >= capacity:
            return
        slots = max(self.max_slots, have_slots, slots)
        if capacity > have_capacity:
            capacity = max(capacity, min(int(have_capacity * CAPACITY_GROWTH), self.net.max_positions))
        capacity = max(min(-(-capacity // CAPACITY_STEP) * CAPACITY_STEP, self.net.max_positions), have_capacity)
        param = self.net.param
        row = self.net.kv_heads * self.net.head_dim * param.element_size()  # bytes per slot position
        needed = 2 * len(self.net.layers) * slots * capacity * row
        if needed > memory_bytes() // 2:
            raise RequestTooLarge(
                f"keys/values for {slots} sequences of {capacity} positions need {needed / 2**30:.1f} GiB, more "
                f"than half of this machine's memory; lower policy.max_batch_size or policy.max_new_tokens"
            )
        if slots > self.count or capacity > self.room:
            self._allocate(slots, capacity, row)
        self.keys = [store[:, :, :capacity] for store in self._key_stores]
        self.values = [store[:, :, :capacity] for store in self._value_stores]
        self.net.rope_table(capacity)

    def _allocate(self, slots: int, capacity: int, row: int) -> None:
        """New stores of ``slots`` slots that keep what the current ones hold, their first
        ``capacity`` positions written: lazily mapped, with room for every position of the model,
        on the CPU and where the OS grants every mapping (none larger than the machine's memory);
        else plain tensors of ``capacity`` positions."""
        net, param, held = self.net, self.net.param, self.capacity
        room = min(net.max_positions, memory_bytes() // (slots * row))
        fresh: list[torch.Tensor] | None = None
        if param.device.type == "cpu" and room >= capacity:
            fresh = []
            for _ in range(2 * len(net.layers)):  # address space only: no page is touched yet
                store = lazy_zeros((slots, net.kv_heads, room, net.head_dim), param.dtype)
                if store is None:
                    fresh = None
                    break
                fresh.append(store)
        if fresh is not None:
            count, stores = self.count, self._key_stores + self._value_stores
            for index, new in enumerate(fresh):
                if stores:
                    new[:count, :, :held] = stores[index][:, :, :held]  # sequences in flight
            self._key_stores, self._value_stores = fresh[: len(net.layers)], fresh[len(net.layers) :]
            self._written = [held] * count + [0] * (slots - count)
            return
        self._written = None
        shape = (slots, net.kv_heads, capacity, net.head_dim)
        for stores in (self._key_stores, self._value_stores):
            if not stores:
                stores.extend(param.new_zeros(shape) for _ in net.layers)
                continue
            for index, old in enumerate(stores):  # one at a time: peak memory grows by one layer
                stores[index] = grown(old[:, :, :held], shape)
                del old

    def prepare(self, slot: int, length: int) -> None:
        """Fault in a slot's first ``length`` positions (rounded up to ``CAPACITY_STEP``) when a
        sequence that may reach that length takes the slot, before it writes anything: zeros are
        written from the end of what earlier calls prepared. Only for lazily mapped stores (plain
        tensors are written in full when allocated). Unprepared positions read as zeros too, so
        a missed call costs time, not correctness; but what was written past the prepared
        positions without a call (a scratch slot's leftovers) is zeroed by the next one."""
        if self._written is None or not 0 <= slot < len(self._written):
            return
        have = self._written[slot]
        length = min(-(-int(length) // CAPACITY_STEP) * CAPACITY_STEP, self.capacity)
        if length <= have:
            return
        for store in self._key_stores + self._value_stores:
            store[slot, :, have:length].zero_()
        self._written[slot] = length

    def copy_out(self, slot: int, length: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """A copy of a slot's first ``length`` positions: ``(layers, 2, kv_heads, length, head_dim)``
        (the layout :meth:`load` takes, and the prefix cache stores), written into ``out`` if given."""
        shape = (len(self.keys), 2, self.net.kv_heads, length, self.net.head_dim)
        if out is not None and tuple(out.shape) != shape:
            raise ValueError(f"copy_out: out has shape {tuple(out.shape)}, expected {shape}")
        kv = self.keys[0].new_empty(shape) if out is None else out
        for index, (k, v) in enumerate(zip(self.keys, self.values)):
            kv[index, 0].copy_(k[slot, :, :length])
            kv[index, 1].copy_(v[slot, :, :length])
        return kv

    def load(self, slot: int, kv: torch.Tensor, length: int) -> None:
        """Write ``kv[:, :, :, :length]`` (layout of :meth:`copy_out`) into a slot's first positions."""
        for index, (k, v) in enumerate(zip(self.keys, self.values)):
            k[slot, :, :length] = kv[index, 0, :, :length]
            v[slot, :, :length] = kv[index, 1, :, :length]

    def move(self, source: int, target: int, length: int, start: int = 0) -> None:
        """Copy a slot's positions ``start..length-1`` into the same positions of another slot."""
        for k, v in zip(self.keys, self.values):
            k[target, :, start:length] = k[source, :, start:length]
            v[target, :, start:length] = v[source, :, start:length]
