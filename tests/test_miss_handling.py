"""Alternatives to waiting for a missed expert (CPU execution, low-precision load, skip), gate weights reaching the
policy, and prefetch candidates reaching MoE-Infinity: hand-computed timelines and counts."""

import numpy as np

from policies.lru import LRUCache
from policies.miss_handling import CPUExecution, LowPrecisionLoad, SkipLowWeight
from policies.prefetchers.recorded import RecordedPrefetcher
from simulator.cache import ExpertCache
from simulator.compute import MissCosts, StepCosts
from simulator.hardware import LinkSpec
from simulator.replay import Timing, replay
from tests.helpers import chunk, toy_model

TIMING = Timing(StepCosts(non_expert_s=1.0, expert_s=0.5), LinkSpec(bandwidth_Bps=12.0, latency_s=0.25))
COSTS = MissCosts(transfer_s=2.25, cpu_expert_s=1.0, activation_round_trip_s=0.5)


def run(handler, weights=None, timing=TIMING, rows=((0, 0, 0, [0, 1]),), policy=LRUCache):
    c = chunk(list(rows))
    if weights is not None:
        c.weights = np.array(weights, dtype=np.float32)
    cache = ExpertCache(policy, 2, "layer", toy_model(layers=1, experts=4, top_k=2))
    return replay([c], cache, timing, miss_handler=handler, miss_costs=COSTS), cache


def test_cpu_execution_runs_misses_on_the_cpu_one_after_another():
    # Router at 1.0; activations reach the CPU at 1.25. e0 runs 1.25..2.25, back on the GPU at 2.5; e1 waits for
    # the CPU: 2.25..3.25, back at 3.5. The GPU only adds outputs: it ends at 3.5 after stalls of 1.5 and 1.0.
    m, cache = run(CPUExecution())
    assert m.cpu_executed == 2 and (m.hits, m.misses, m.bytes_h2d) == (0, 2, 0)
    assert m.total_time_s == 3.5 and m.stall_time_s == 2.5 and m.compute_time_s == 1.0
    assert cache.resident_count() == 0  # nothing crossed to the GPU
    assert m.summary()["approximated_accesses"] == 0  # exact: it changes no output


def test_cpu_execution_loads_when_the_link_is_faster():
    slow_cpu = MissCosts(transfer_s=2.25, cpu_expert_s=5.0, activation_round_trip_s=0.5)
    assert CPUExecution().decide(0, 0, 0, None, slow_cpu) == ("load", 1.0)
    assert CPUExecution(always=True).decide(0, 0, 0, None, slow_cpu)[0] == "cpu"


def test_low_precision_copy_of_a_low_weight_miss_crosses_faster_and_is_not_kept():
    # e0 (weight .8) loads in full: on the wire 1.25..3.25. e1 (weight .2, 4 of 16 bits: 6 bytes) follows in router
    # order: 3.5..4.0. GPU: waits to 3.25 (stall 2.25), e0 to 3.75, waits to 4.0 (0.25), e1 to 4.5.
    m, cache = run(LowPrecisionLoad(threshold=0.3, bits=4), weights=[[0.8, 0.2]])
    assert m.approximated_low_precision == 1 and m.summary()["approximated_accesses"] == 1
    assert m.total_time_s == 4.5 and m.stall_time_s == 2.5 and m.compute_time_s == 2.0
    assert m.bytes_h2d == 24 + 6
    assert cache.is_resident(0, 0) and not cache.is_resident(0, 1)


def test_skip_drops_a_low_weight_second_expert_but_never_the_first():
    m, _ = run(SkipLowWeight(threshold=0.3), weights=[[0.8, 0.2]])
    assert m.approximated_skipped == 1 and m.misses == 2
    assert m.total_time_s == 3.75 and m.compute_time_s == 1.5  # e0 alone: arrives 3.25, computed to 3.75
    m, _ = run(SkipLowWeight(threshold=0.3), weights=[[0.1, 0.05]])
    assert m.approximated_skipped == 1  # rank 0 is loaded whatever its weight


def test_handled_misses_count_the_same_without_a_clock():
    timed, _ = run(SkipLowWeight(threshold=0.3), weights=[[0.8, 0.2]])
    counted, _ = run(SkipLowWeight(threshold=0.3), weights=[[0.8, 0.2]], timing=None)
    assert (counted.hits, counted.misses, counted.approximated_skipped) == (timed.hits, timed.misses, 1)


def test_gate_weights_reach_a_policy_that_reads_them():
    seen = []

    class GateSpy(LRUCache):
        uses_gate_weights = True

        def observe_gate(self, key, weight):
            seen.append((key, round(float(weight), 2)))

    run(None, weights=[[0.7, 0.3]], policy=GateSpy)
    assert seen == [(0, 0.7), (1, 0.3)]


def test_prefetch_candidates_reach_a_policy_that_protects_them():
    class CandidateSpy(LRUCache):
        uses_prefetch_candidates = True

        def __init__(self, capacity):
            super().__init__(capacity)
            self.prefetch_candidates = set()
            self.history = []

        def observe_prefetch_candidates(self, keys):
            self.prefetch_candidates = keys

        def evict(self, protected):
            self.history.append(set(self.prefetch_candidates))
            return super().evict(protected)

    model = toy_model(layers=2, experts=4, top_k=1)
    c = chunk([(0, 0, 0, [0]), (0, 0, 1, [1]), (0, 1, 0, [2]), (0, 1, 1, [3])])
    c.predictions = {"p": [[0], [1], [2], [3]]}
    cache = ExpertCache(CandidateSpy, 1, "layer", model)
    replay([c], cache, prefetcher=RecordedPrefetcher(model, column="p", horizon=1))
    # Token 1's start requests layer 0's predicted expert 2: layer 0's policy learns {2} before it evicts 0 for it.
    assert cache.policies[0].history == [{2}]
