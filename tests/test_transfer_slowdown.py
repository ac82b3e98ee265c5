"""`gpu.transfer_slowdown`: expert compute runs (1 + it) times longer while the layer step's fetches are in flight.
Hand-computed timelines (exact binary fractions, as tests/test_timing.py) and the profile field."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from hardware_profiles.schema import ProfileFile
from policies.lru import LRUCache
from simulator.cache import ExpertCache
from simulator.compute import StepCosts
from simulator.hardware import LinkSpec
from simulator.replay import Timing, replay
from tests.helpers import chunk, toy_model

# 24-byte experts over 12 B/s (2 s on the wire) after 0.25 s latency, one copy engine; non-expert 1 s.
ONE_ENGINE = LinkSpec(bandwidth_Bps=12.0, latency_s=0.25, copy_engines=1)
THREE_TOKENS = [(0, 0, 0, [0, 1]), (0, 1, 0, [1, 2]), (0, 2, 0, [2, 1])]


def run(rows, costs, compiled=True):
    cache = ExpertCache(LRUCache, 2, "layer", toy_model())
    return replay([chunk(rows)], cache, Timing(costs, ONE_ENGINE), compiled=compiled)


def test_compute_while_fetches_are_in_flight_takes_longer():
    # Expert 0.5 s, twice as long while in flight (slowdown 1).
    # token 0: router at 1.0; e0 arrives 3.25, e1 5.5 (serial). Stall to 3.25; e0 computed while e1 is on the wire:
    #          3.25..4.25 (1.0 s); stall to 5.5; e1 with nothing in flight 5.5..6.0.
    # token 1: e1 hits, e2 misses: router 7.0, e2 arrives 9.25; e1 computed while e2 is on the wire 7.0..8.0;
    #          stall to 9.25; e2 9.25..9.75.
    # token 2: both hit, nothing in flight: 10.75..11.75.
    # Unslowed (tests/test_timing.py): the same end, compute 6.0 and stall 5.75.
    m = run(THREE_TOKENS, StepCosts(non_expert_s=1.0, expert_s=0.5, transfer_slowdown=1.0))
    assert m.total_time_s == 11.75
    assert m.compute_time_s == 3.0 + 1.0 + 0.5 + 1.0 + 0.5 + 1.0
    assert m.stall_time_s == 2.25 + 1.25 + 1.25
    assert m.per_layer.stall_s == [4.75]


def test_work_that_outlasts_the_fetches_runs_at_full_speed_after_them():
    # Expert 1.5 s, slowdown 1.
    # token 0: e0 arrives 3.25, e1 5.5: e0 from 3.25 at half speed until 5.5 (1.125 s of its work done), the rest
    #          0.375 s at full speed: ends 5.875; e1 (arrived) 5.875..7.375. Stall 2.25 only.
    # token 1: router 8.375; e2 on the wire 8.625..10.625; e1 (hit) at half speed to 10.625 (1.125 s done), the
    #          rest to 11.0; e2 11.0..12.5.
    m = run(THREE_TOKENS[:2], StepCosts(non_expert_s=1.0, expert_s=1.5, transfer_slowdown=1.0))
    assert m.total_time_s == 12.5
    assert m.stall_time_s == 2.25
    assert m.compute_time_s == 2 * (1.0 + 2.625 + 1.5)


def test_a_slowed_replay_takes_the_python_clock_and_no_slowdown_changes_nothing():
    plain = StepCosts(non_expert_s=1.0, expert_s=0.5)
    assert run(THREE_TOKENS, plain).summary() == run(THREE_TOKENS, plain, compiled=False).summary()
    slowed = replace(plain, transfer_slowdown=1.0)
    assert run(THREE_TOKENS, slowed).summary() == run(THREE_TOKENS, slowed, compiled=False).summary()
    assert run(THREE_TOKENS, slowed).compute_time_s > run(THREE_TOKENS, plain).compute_time_s


def profile_doc(**gpu):
    doc = yaml.safe_load((Path(__file__).parents[1] / "hardware_profiles" / "rtx4090_pcie4.yaml").read_text())
    doc["gpu"].update(gpu)
    return doc


def test_the_profile_field_is_cited_non_negative_and_defaults_to_zero():
    assert ProfileFile.model_validate(profile_doc()).to_profile().gpu.transfer_slowdown == 0.0
    doc = profile_doc(transfer_slowdown=0.125)
    doc["gpu"]["sources"]["transfer_slowdown"] = "a measurement"
    assert ProfileFile.model_validate(doc).to_profile().gpu.transfer_slowdown == 0.125
    uncited = profile_doc(transfer_slowdown=0.125)
    with pytest.raises(ValueError, match="transfer_slowdown"):
        ProfileFile.model_validate(uncited)
    doc["gpu"]["transfer_slowdown"] = -0.1
    with pytest.raises(ValueError, match="transfer_slowdown"):
        ProfileFile.model_validate(doc)
