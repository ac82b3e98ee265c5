"""A link that is not full duplex (`LinkSpec.duplex_bandwidth_Bps`): while the opposite direction carries data, the
wire runs at its duplex bandwidth (an A100 host's PCIe 4.0 H2D drops from ~25 to 12-13 GB/s under a concurrent D2H
copy, nvbandwidth issue #11). The simulator's opposite traffic is the activations a CPU-run expert reads.

Hand-computed on a 10 B/s wire that runs at 5 B/s (half rate) inside the windows, latency 0 unless a test says
otherwise; every number is an exact binary fraction, so float equality is exact.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware_profiles.schema import load_profile, profile_path
from policies.placements import DynamicSplit
from simulator.compute import ACTIVATION_BYTES, MissCosts, miss_costs
from simulator.errors import InputError
from simulator.hardware import LinkSpec
from simulator.link import Link
from simulator.presets import get_preset
from simulator.replay import Timing
from tests.test_placement import COSTS, EXPERT_BYTES, LINK, resident, run

HALF = LinkSpec(bandwidth_Bps=10.0, latency_s=0.0, duplex_bandwidth_Bps=5.0)


def test_a_transfer_across_a_window_runs_at_half_rate_inside_it():
    """40 bytes from 0 (4 s at full rate), the opposite direction busy over [1, 3): 10 B by 1, 10 B more by 3 at
    5 B/s, the last 20 B by 5."""
    link = Link(HALF)
    link.carry_opposite(1.0, 3.0)
    assert link.transfer(0.0, 40) == 5.0
    assert link.busy_demand_s == 5.0  # the wire is busy the whole stretch, at whatever rate


def test_a_full_duplex_link_ignores_the_opposite_direction():
    link = Link(replace(HALF, duplex_bandwidth_Bps=None))
    link.carry_opposite(1.0, 3.0)
    assert link.transfer(0.0, 40) == 4.0


def test_windows_that_overlap_merge_and_one_that_ended_is_forgotten():
    """Windows [0, 2) and [1, 4) are one, [0, 4). A transfer of 10 B from 5 is after it: 1 s. Then 10 B from 6
    with a window [6.5, 7): 5 B by 6.5, 2.5 B by 7, the last 2.5 B by 7.25."""
    link = Link(HALF)
    link.carry_opposite(0.0, 2.0)
    link.carry_opposite(1.0, 4.0)
    assert link.transfer(5.0, 10) == 6.0
    link.carry_opposite(6.5, 7.0)
    assert link.transfer(6.0, 10) == 7.25


def test_a_shared_group_slows_as_one():
    """Two 20-byte reads sharing the wire from 0 (both end at 4 s at full rate); window [0, 2): by 2 the wire has
    carried 1 s of work, the other 3 s end at 5."""
    link = Link(replace(HALF, sharing="shared", copy_engines=2))
    link.carry_opposite(0.0, 2.0)
    assert link.transfer_group(0.0, [(0, 20), (1, 20)]) == [5.0, 5.0]
    assert link.busy_demand_s == 5.0


def test_a_demand_preempting_a_prefetch_inside_a_window():
    """Window [0, 10). A 40-byte prefetch goes on the wire at 0 (at 5 B/s it would end at 8). At 2 a 10-byte demand
    takes the wire: the prefetch has carried 10 B, the demand's 10 B take 2 s (to 4), the prefetch's last 30 B
    take 6 s (to 10)."""
    link = Link(replace(HALF, preempt_prefetch=True))
    link.carry_opposite(0.0, 10.0)
    prefetch = link.prefetch(0.0, key=1, nbytes=40)
    link.advance(0.0)
    assert prefetch.end_s == 8.0
    assert link.transfer(2.0, 10, key=2) == 4.0
    assert prefetch.end_s == 10.0


def test_dynamic_split_a_load_beside_a_cpu_experts_activations():
    """test_placement's dynamic-split case with a slower trip to the CPU: round trip 1.0 s (0.5 each way), of which
    the D2H wire carries the activations for the last 0.25 s of the way there; the 12 B/s link runs at 6 B/s
    (duplex) meanwhile. One token routes [0, 1, 2], e0 resident; router T = 1.0.

    split, e1: load -> 3.25, GPU end 3.75; CPU -> done 1.5 + 1.5 = 3.0, back 3.5: 3.5 < 3.75 -> CPU.
    split, e2: CPU -> done 3.0 + 1.5 = 4.5, back 5.0, not < 3.75 -> load (the estimate knows no duplex).
    engine: e1's activations on the D2H wire 1.25..1.5. e2 on the H2D wire from 1.25 (latency 0.25): at 6 B/s until
    1.5 (1.5 bytes), the other 22.5 bytes at 12 B/s to 3.375 (full duplex: 3.25). GPU: e0 1.0..1.5, waits for e2
    to 3.375 (stall 1.875), computes it to 3.875; e1's output came back at 3.5. total 3.875, stall 1.875.
    """
    miss = MissCosts(transfer_s=2.25, cpu_expert_s=1.5, activation_round_trip_s=1.0, activation_d2h_wire_s=0.25)
    half = Timing(COSTS, replace(LINK, duplex_bandwidth_Bps=6.0))
    m, cache = run([(0, 0, 0, [0, 1, 2])], DynamicSplit(), top_k=3, capacity=4, miss=miss, warm=[(0, 0)], timing=half)
    assert (m.total_time_s, m.stall_time_s, m.cpu_busy_s) == (3.875, 1.875, 1.5)
    assert (m.hits, m.expert_loads, m.cpu_executed, m.bytes_h2d) == (1, 1, 1, EXPERT_BYTES)
    assert m.h2d_busy_s == 2.125
    assert resident(cache, 0) == [0, 2]
    full, _ = run([(0, 0, 0, [0, 1, 2])], DynamicSplit(), top_k=3, capacity=4, miss=miss, warm=[(0, 0)])
    assert (full.total_time_s, full.stall_time_s, full.h2d_busy_s) == (3.75, 1.75, 2.0)


@settings(max_examples=60, deadline=None)
@given(ready=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 50)), min_size=1, max_size=8),
       windows=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 10)), max_size=6),
       duplex=st.sampled_from([1.0, 2.5, 5.0, 10.0]))
def test_a_slower_wire_delivers_no_earlier_and_moves_the_same_bytes(ready, windows, duplex):
    """Serial transfers booked in time order with windows registered in time order between them: every arrival is
    no earlier than on a full-duplex wire, no later than on a wire at the duplex rate throughout, and the bytes are
    the same."""
    def book(spec):
        link, ends, pending = Link(spec), [], sorted(windows)
        for t, nbytes in sorted(ready):
            while pending and pending[0][0] <= t:
                start, length = pending.pop(0)
                link.carry_opposite(float(start), float(start + length))
            ends.append(link.transfer(float(t), nbytes))
        return link, ends

    slow, slow_ends = book(replace(HALF, duplex_bandwidth_Bps=duplex))
    full, full_ends = book(replace(HALF, duplex_bandwidth_Bps=None))
    always, always_ends = book(LinkSpec(bandwidth_Bps=duplex, latency_s=0.0))
    for s, f, a in zip(slow_ends, full_ends, always_ends):
        assert f - 1e-9 <= s <= a + 1e-9
    assert slow.bytes_moved == full.bytes_moved


def test_the_a100_profile_is_half_duplex_and_its_miss_costs_carry_the_activations_wire_time():
    hardware = load_profile("a100_80g_pcie4")
    assert hardware.h2d.duplex_bandwidth_Bps == 12.5e9 and hardware.d2h.duplex_bandwidth_Bps == 24.0e9
    model = get_preset("mixtral-8x7b")
    costs = miss_costs(model, hardware, tokens=4)
    assert costs.activation_d2h_wire_s == model.hidden_size * ACTIVATION_BYTES * 4 / hardware.d2h.bandwidth_Bps


def test_a_duplex_bandwidth_above_the_link_bandwidth_is_refused(tmp_path):
    text = profile_path("a100_80g_pcie4")[0].read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("duplex_bandwidth_Bps: 12.5e+9", "duplex_bandwidth_Bps: 30.0e+9", 1))
    with pytest.raises(InputError, match="duplex_bandwidth_Bps"):
        load_profile(str(bad))
