"""Key/value slots: lazily mapped stores that grow without copying, geometric growth with copies where
no mapping is granted, copies in and out, refusals."""

from __future__ import annotations

import resource

import pytest
import torch

from leafe.policy.errors import RequestTooLarge
import leafe.policy.kv_slots as kv_slots
from leafe.policy.kv_slots import KVSlots, grown
from leafe.policy.memory import lazy_zeros, memory_bytes
from leafe.policy.native_forward import LlamaFamilyForward


@pytest.fixture()
def net(tiny_policy):
    return LlamaFamilyForward(tiny_policy.model)


def test_growing_keeps_sequences_in_flight_and_zeroes_the_rest():
    old = torch.randn(2, 3, 4, 5)
    new = grown(old, (3, 3, 7, 5))
    assert torch.equal(new[:2, :, :4], old)
    assert not new[:2, :, 4:].any() and not new[2:].any()


@pytest.mark.parametrize("mapped", [True, False])
def test_capacity_grows_geometrically(net, mapped, monkeypatch):
    if not mapped:
        monkeypatch.setattr(kv_slots, "lazy_zeros", lambda shape, dtype: None)
    slots = KVSlots(net, max_slots=2)
    assert slots.count == slots.capacity == 0
    slots.reserve(1, 100)
    assert (slots.count, slots.capacity) == (2, 128)  # every slot at once, a multiple of 128 positions
    slots.reserve(2, 129)  # a prompt one position longer: room for many more turns
    assert slots.capacity == 256  # 1.5 x 128 = 192, rounded up to the 128 step
    slots.reserve(2, 1900)
    assert slots.capacity == 1920  # the request is larger than 1.5 x: its own size
    slots.reserve(2, 1930)
    assert slots.capacity == 2048  # 1.5 x, capped at the model's positions
    assert len(slots.keys) == len(slots.values) == len(net.layers)
    assert all(k.shape == v.shape == (2, net.kv_heads, 2048, net.head_dim) for k, v in zip(slots.keys, slots.values))


def test_lazy_zeros_are_zeros_that_touch_no_memory_until_written():
    rows = memory_bytes() // 2 // (4 << 12)  # half of the machine's memory in rows of 16 KiB
    huge = lazy_zeros((rows, 1 << 12), torch.float32)
    assert huge is not None and huge.shape == (rows, 1 << 12) and not huge[-1].any()
    huge[5, 7] = 3.0
    assert float(huge[5].sum()) == 3.0
    assert lazy_zeros((0, 4), torch.float32) is None


def test_on_the_cpu_the_capacity_grows_in_place(net):
    slots = KVSlots(net, max_slots=2)
    slots.reserve(2, 100)
    assert slots.room == net.max_positions and slots.capacity == 128
    slots.keys[0][1, :, :5] = 1.0
    address = slots.keys[0].data_ptr()
    slots.reserve(2, 1000)
    assert slots.capacity == 1024 and slots.keys[0].data_ptr() == address  # a wider view, no copy
    assert float(slots.keys[0][1].sum()) == net.kv_heads * 5 * net.head_dim
    slots.values[-1][0, :, 1000:1024] = 2.0  # a sequence in flight up to the capacity
    slots.reserve(3, 1000)  # more slots: new stores, the sequences in flight copied over
    assert slots.count == 3 and float(slots.keys[0][1].sum()) == net.kv_heads * 5 * net.head_dim
    assert bool((slots.values[-1][0, :, 1000:1024] == 2.0).all()) and slots.values[-1].shape[2] == 1024
    assert not slots.keys[0][2].any() and not slots.values[-1][2].any()  # the new slot holds zeros


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_prepare_faults_in_one_slot_up_to_its_length_once(net):
    slots = KVSlots(net, max_slots=2)
    slots.reserve(2, net.max_positions)
    pages = 2 * len(net.layers) * net.kv_heads * net.max_positions * net.head_dim * 4 // 4096  # one slot
    before = _minor_faults()
    slots.prepare(0, 100)  # rounded up to 128 positions
    slots.keys[0][0, :, :100] = 1.0
    slots.prepare(0, net.max_positions)
    first = _minor_faults() - before
    before = _minor_faults()
    slots.prepare(0, net.max_positions)
    slots.prepare(0, 50)
    again = _minor_faults() - before
    assert first >= 0.9 * pages and again < 0.1 * pages
    assert float(slots.keys[0][0].sum()) == net.kv_heads * 100 * net.head_dim  # what it held is kept
    assert not slots.keys[0][1].any()  # the other slot reads as zeros, prepared or not


def test_prepare_does_nothing_to_plain_tensors(net, monkeypatch):
    monkeypatch.setattr(kv_slots, "lazy_zeros", lambda shape, dtype: None)
    slots = KVSlots(net, max_slots=2)
    slots.reserve(2, 100)
    slots.keys[0][1, :, 3] = 1.0
    slots.prepare(1, 128)
    assert float(slots.keys[0][1].sum()) == net.kv_heads * net.head_dim


def test_a_mapping_refused_midway_leaves_every_store_plain(net, monkeypatch):
    granted = iter([True])  # the OS grants one mapping, then refuses
    monkeypatch.setattr(
        kv_slots, "lazy_zeros", lambda shape, dtype: lazy_zeros(shape, dtype) if next(granted, False) else None
    )
    slots = KVSlots(net, max_slots=2)
    slots.reserve(2, 100)
    assert slots.capacity == slots.room == 128
    assert all(s.shape == slots.keys[0].shape for s in slots.keys + slots.values)


def test_without_a_mapping_the_capacity_grows_by_copying(net, monkeypatch):
    monkeypatch.setattr(kv_slots, "lazy_zeros", lambda shape, dtype: None)  # the OS refuses the mapping
    slots = KVSlots(net, max_slots=2)
    slots.reserve(2, 100)
    assert slots.room == slots.capacity == 128
    address = slots.keys[0].data_ptr()
    slots.reserve(2, 129)
    assert slots.room == slots.capacity == 256 and slots.keys[0].data_ptr() != address


@pytest.mark.parametrize("mapped", [True, False])
def test_growth_keeps_what_the_slots_hold(net, mapped, monkeypatch):
    if not mapped:
        monkeypatch.setattr(kv_slots, "lazy_zeros", lambda shape, dtype: None)
    slots = KVSlots(net, max_slots=2)
    slots.reserve(2, 10)
    for k, v in zip(slots.keys, slots.values):
        k.normal_()
        v.normal_()
    before = slots.copy_out(1, 128)
    slots.reserve(2, 300)
    assert torch.equal(slots.copy_out(1, 128), before)
    assert not slots.copy_out(1, slots.capacity)[:, :, :, 128:].any()


def test_copy_out_load_and_move_round_trip(net):
    slots = KVSlots(net, max_slots=3)
    slots.reserve(3, 20)
    for k, v in zip(slots.keys, slots.values):
        k[0].normal_()
        v[0].normal_()
    kv = slots.copy_out(0, 7)
    assert kv.shape == (len(net.layers), 2, net.kv_heads, 7, net.head_dim)
    with pytest.raises(ValueError, match="expected"):
        slots.copy_out(0, 7, out=torch.empty(len(net.layers), 2, net.kv_heads, 6, net.head_dim))
    slots.load(1, kv, 5)
    assert torch.equal(slots.copy_out(1, 5), kv[:, :, :, :5])
    assert not slots.copy_out(1, 7)[:, :, :, 5:].any()  # only ``length`` positions are written
    slots.move(0, 2, 7)
    assert torch.equal(slots.copy_out(2, 7), kv)
    slots.clear()
    assert slots.keys == slots.values == [] and slots.count == 0


def test_requests_too_large_are_refused_before_allocating(net):
    slots = KVSlots(net, max_slots=4, model_name="tiny")
    with pytest.raises(RequestTooLarge, match="tiny supports 2048"):
        slots.reserve(4, 5000)
    huge = KVSlots(net, max_slots=300_000)
    with pytest.raises(RequestTooLarge, match="policy.max_batch_size"):  # ~150 GB of keys/values
        huge.reserve(300_000, 2000)
    assert not slots.keys and not huge.keys
