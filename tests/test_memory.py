"""The memory hierarchy behind the GPU: hand-computed timelines for NVMe -> DRAM -> GPU, GPUDirect Storage, a C2C
link, NVMe queue depth, and a DRAM cache of NVMe-resident experts."""

import pytest

from policies.lru import LRUCache
from simulator.cache import ExpertCache
from simulator.compute import StepCosts
from simulator.hardware import LinkSpec
from simulator.link import Link
from simulator.memory import MemoryHierarchy
from simulator.replay import Timing, replay
from tests.helpers import chunk, toy_model

H2D = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25)  # 24-byte experts: 2.25 s
NVME = LinkSpec(bandwidth_Bps=6.0, latency_s=1.0)  # 5.0 s
GDS = LinkSpec(bandwidth_Bps=8.0, latency_s=0.5)  # 3.5 s
COSTS = StepCosts(non_expert_s=1.0, expert_s=0.5)


def run(rows, *, top_k=1, capacity=1, nvme=NVME, gds=None, dram_capacity=None, path="staged", home="nvme", h2d=H2D):
    model = toy_model(layers=1, experts=4, top_k=top_k)
    dram = ExpertCache(LRUCache, dram_capacity, "global", model) if dram_capacity else None
    memory = MemoryHierarchy(Link(h2d), 4, nvme=Link(nvme) if nvme else None, gds=Link(gds) if gds else None,
                             dram_cache=dram, home=home, path=path)
    cache = ExpertCache(LRUCache, capacity, "layer", model)
    return replay([chunk(rows)], cache, Timing(COSTS, h2d), memory=memory)


def test_nvme_read_then_host_to_device_copy():
    # Router at 1.0; NVMe read on the wire 2.0..6.0; H2D 6.25..8.25; GPU stalls 7.25 and ends at 8.75.
    m = run([(0, 0, 0, [0])])
    assert m.total_time_s == 8.75 and m.stall_time_s == 7.25
    assert (m.bytes_nvme, m.bytes_h2d, m.dram_accesses, m.dram_hits) == (24, 24, 1, 0)


def test_dram_cache_of_nvme_experts_saves_the_nvme_read():
    # token 0: expert 0 from NVMe as above, ends 8.75. token 1: expert 1 from NVMe: router 9.75, NVMe 10.75..14.75,
    # H2D 15.0..17.0, ends 17.5. token 2: expert 0 again: gone from the 1-slot GPU cache but in the 2-slot DRAM
    # cache: H2D only, router 18.5, arrives 20.75, ends 21.25.
    m = run([(0, 0, 0, [0]), (0, 1, 0, [1]), (0, 2, 0, [0])], dram_capacity=2)
    assert m.total_time_s == 21.25
    assert (m.dram_accesses, m.dram_hits, m.bytes_nvme, m.bytes_h2d) == (3, 1, 48, 72)
    assert m.summary()["dram_hit_rate"] == pytest.approx(1 / 3)


def test_gpudirect_storage_reads_straight_into_gpu_memory():
    # Router at 1.0; GDS on the wire 1.5..4.5; the GPU computes to 5.0. The H2D link stays idle.
    m = run([(0, 0, 0, [0])], gds=GDS, path="gds")
    assert m.total_time_s == 5.0 and m.stall_time_s == 3.5
    assert m.bytes_h2d == 24 and m.bytes_nvme == 24 and m.transfers_h2d == 1


def test_nvme_queue_depth_overlaps_latency_not_bandwidth():
    # Two misses in one step; NVMe with 2 reads in flight: e0 on the wire 2.0..6.0, e1's set-up overlaps, on the wire
    # 6.0..10.0. H2D: e0 6.25..8.25, e1 10.25..12.25. GPU: e0 at 8.25..8.75, e1 at 12.25..12.75.
    deep = LinkSpec(bandwidth_Bps=6.0, latency_s=1.0, copy_engines=2)
    m = run([(0, 0, 0, [0, 1])], top_k=2, capacity=2, nvme=deep)
    assert m.total_time_s == 12.75
    shallow = run([(0, 0, 0, [0, 1])], top_k=2, capacity=2)
    assert shallow.total_time_s == 13.75  # e1's read waits a whole latency more: 7.0..11.0, H2D 11.25..13.25


def test_within_a_step_dram_fetches_go_before_nvme_fetches():
    # Expert 1 is in DRAM, expert 0 is not; router order is [0, 1]. Expert 1 crosses H2D at once (1.25..3.25);
    # expert 0's H2D copy waits for its NVMe read (2.0..6.0) and follows (6.25..8.25).
    model = toy_model(layers=1, experts=4, top_k=2)
    dram = ExpertCache(LRUCache, 2, "global", model)
    dram.access(0, [1])
    memory = MemoryHierarchy(Link(H2D), 4, nvme=Link(NVME), dram_cache=dram, home="nvme")
    assert memory.demand(0, [(0, 24), (1, 24)], 1.0) == ([8.25, 3.25], 0.0)


def test_a_c2c_link_is_a_fast_host_to_device_link():
    c2c = LinkSpec(bandwidth_Bps=96.0, latency_s=0.0)  # 24 bytes in 0.25 s
    m = run([(0, 0, 0, [0])], home="dram", nvme=None, h2d=c2c)
    assert m.total_time_s == 1.0 + 0.25 + 0.5 and m.bytes_nvme == 0


def test_nvme_home_needs_an_nvme_path_in_the_profile():
    from dataclasses import replace

    from experiments.config import CacheConfig, HardwareConfig, MemoryConfig, ModelConfig, ReplayConfig, RunConfig, TraceConfig
    from experiments.run import make_memory
    from hardware_profiles.schema import load_profile
    from simulator.errors import InputError

    run_config = RunConfig(trace=TraceConfig(), model=ModelConfig(), hardware=HardwareConfig(profile="rtx4090_pcie4"),
                           policy={"_target_": "lru"}, cache=CacheConfig(capacity=8), replay=ReplayConfig(),
                           memory=MemoryConfig(home="nvme", path="gds"))
    profile = replace(load_profile("rtx4090_pcie4"), nvme=None, gds=None)
    with pytest.raises(InputError, match="no 'nvme' section"):
        make_memory(run_config, toy_model(), profile)
    with pytest.raises(InputError, match="no 'gds' section"):
        make_memory(run_config, toy_model(), replace(profile, nvme=NVME))


def test_mixture_of_lookup_experts_fetches_table_rows_and_computes_no_expert():
    from dataclasses import replace

    model = replace(toy_model(layers=1, experts=4, top_k=2), kind="mole")  # rows of hidden 2 × 2 bytes = 4 bytes
    link = LinkSpec(bandwidth_Bps=8.0, latency_s=0.25)
    rows = [(0, 0, 0, [0, 1]), (0, 1, 0, [0, 1])]
    m = replay([chunk(rows, token_ids=[5, 9])], ExpertCache(LRUCache, 2, "layer", model), Timing(COSTS, link))
    # Each step: router at +1.0, both rows (8 bytes) in one read: 0.25 + 1.0; no expert compute. The same experts
    # for another token id are other rows: fetched again.
    assert m.total_time_s == 2 * 2.25 and m.stall_time_s == 2 * 1.25 and m.compute_time_s == 2.0
    assert (m.accesses, m.hits, m.bytes_h2d) == (4, 0, 16)
    on_nvme = MemoryHierarchy(Link(link), 4, nvme=Link(NVME), home="nvme")
    m = replay([chunk(rows[:1], token_ids=[5])], ExpertCache(LRUCache, 2, "layer", model), Timing(COSTS, link), memory=on_nvme)
    assert m.total_time_s == 1.0 + (1.0 + 8 / 6) + (0.25 + 1.0) and m.bytes_nvme == 8
