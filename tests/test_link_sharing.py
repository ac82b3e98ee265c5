"""A shared wire (`LinkSpec.sharing = "shared"`): the transfers of one step share the bandwidth. Hand-computed
timelines (exact binary fractions) and, against the serial wire, the properties both must have."""

from dataclasses import replace

from hypothesis import given, settings, strategies as st

from policies.lru import LRUCache
from simulator.cache import ExpertCache
from simulator.compute import StepCosts
from simulator.hardware import LinkSpec
from simulator.link import Link
from simulator.memory import MemoryHierarchy
from simulator.replay import Timing, replay
from tests.helpers import chunk, toy_model

# As tests/test_timing.py: 24-byte experts over 12 B/s (2 s on the wire) after 0.25 s latency; non-expert 1 s,
# expert 0.5 s.
COSTS = StepCosts(non_expert_s=1.0, expert_s=0.5)
SHARED = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25, copy_engines=2, sharing="shared")


def test_two_misses_arrive_together_and_are_computed_after_the_stall():
    # Router at 1.0; both experts on the wire from 1.25 at 6 B/s each, both arrive at 1.25 + 48/12 = 5.25.
    # The GPU waits 1.0..5.25 (stall 4.25) and computes e0, e1 to 6.25. (Serial, two engines: e0 arrives at 3.25
    # and is computed while e1 crosses; 5.75 in all — tests/test_timing.py.)
    cache = ExpertCache(LRUCache, 2, "layer", toy_model())
    m = replay([chunk([(0, 0, 0, [0, 1])])], cache, Timing(COSTS, SHARED))
    assert m.total_time_s == 6.25
    assert m.stall_time_s == 4.25
    assert m.bytes_h2d == 48 and m.transfers_h2d == 2 and m.h2d_busy_s == 4.0


def test_unequal_sizes_finish_smallest_first():
    # From 0.25 both share 12 B/s: after 2 s each has had 12 bytes, the 12-byte one is done (2.25); the 24-byte
    # one has the wire alone for its last 12 bytes: 3.25.
    link = Link(SHARED)
    assert link.transfer_group(0.0, [(0, 24), (1, 12)]) == [3.25, 2.25]
    assert link.bytes_demand == 36 and link.transfers == 2 and link.busy_demand_s == 3.0


def test_copy_engines_bound_the_transfers_sharing_the_wire():
    # One engine: the second waits for the first (one latency for the group): 2.25, then 4.25.
    link = Link(replace(SHARED, copy_engines=1))
    assert link.transfer_group(0.0, [(0, 24), (1, 24)]) == [2.25, 4.25]
    # Three equal transfers, two engines: two share until 4.25, the third then runs alone until 6.25.
    link = Link(SHARED)
    assert link.transfer_group(0.0, [(0, 24), (1, 24), (2, 24)]) == [4.25, 4.25, 6.25]


def test_a_later_transfer_queues_behind_the_group():
    link = Link(SHARED)
    assert link.transfer_group(0.0, [(0, 24), (1, 24)]) == [4.25, 4.25]
    assert link.transfer(1.0, 24) == 4.25 + 0.25 + 2.0  # both engines busy until 4.25, then its own latency
    assert link.transfer_group(20.0, [(3, 24)]) == [22.25]  # a group of one on an idle link is a plain transfer


def test_shared_nvme_reads_then_serial_h2d_copies():
    # Home NVMe, no DRAM cache: two reads share a 12 B/s drive (0.25 s latency): both in DRAM at 4.25; then each
    # crosses a serial 24 B/s h2d of one copy engine (latency 0.5 s): on the wire 4.75..5.75, and the second, set
    # up once the engine is free, 6.25..7.25.
    model = toy_model()
    h2d = Link(LinkSpec(bandwidth_Bps=24.0, latency_s=0.5))
    memory = MemoryHierarchy(h2d, model.experts_per_layer, nvme=Link(SHARED, "nvme"), home="nvme")
    assert memory.demand(0, [(0, 24), (1, 24)], 0.0) == ([5.75, 7.25], 0.0)
    assert memory.bytes_nvme == 48


def test_zero_bandwidth_never_delivers():
    link = Link(replace(SHARED, bandwidth_Bps=0.0))
    assert link.transfer_group(0.0, [(0, 24), (1, 24)]) == [float("inf")] * 2


sizes = st.lists(st.integers(min_value=1, max_value=1 << 20), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(sizes, st.integers(min_value=1, max_value=8), st.sampled_from([0.0, 1e-5]))
def test_shared_group_moves_what_a_serial_wire_moves(nbytes, engines, latency):
    """On an idle link both wires carry every byte after one latency and end together when every transfer can be
    set up at once; a shared transfer never arrives before its own bytes could."""
    spec = LinkSpec(bandwidth_Bps=1e9, latency_s=latency, copy_engines=engines, sharing="shared")
    fetches = list(enumerate(nbytes))
    shared = Link(spec).transfer_group(0.0, fetches)
    serial_link = Link(replace(spec, sharing="serial", copy_engines=len(nbytes)))
    serial = serial_link.transfer_group(0.0, fetches)
    wire_s = sum(nbytes) / spec.bandwidth_Bps
    assert abs(max(shared) - (latency + wire_s)) <= 1e-12 * max(1.0, wire_s)
    assert abs(max(serial) - max(shared)) <= 1e-12 * max(1.0, wire_s)
    for end, size in zip(shared, nbytes):
        assert end >= latency + size / spec.bandwidth_Bps - 1e-15
    if len(set(nbytes)) == 1 and engines >= len(nbytes):  # equal transfers all end with the serial wire's last
        assert all(abs(end - max(serial)) <= 1e-12 * max(1.0, wire_s) for end in shared)
