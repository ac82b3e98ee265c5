"""`gpu.fetched_slowdown`: a fetched expert, computed as its weights land, takes (1 + it) times a resident one's
compute (on the CPU miniature the read leaves its bytes where the processor reads them slower than memory it read
before). Hand-computed timelines (exact binary fractions, as tests/test_timing.py) and the profile field."""

from dataclasses import replace

import pytest

from hardware_profiles.schema import ProfileFile
from simulator.compute import StepCosts
from tests.test_transfer_slowdown import THREE_TOKENS, profile_doc, run


def test_a_fetched_expert_computes_longer_than_a_resident_one():
    # Expert 0.5 s resident, 1.0 s fetched (slowdown 1); 2.25 s per fetch on one serial link after the router.
    # token 0: router 1.0; e0 arrives 3.25, e1 5.5: stall to 3.25, e0 3.25..4.25, stall to 5.5, e1 5.5..6.5.
    # token 1: router 7.5; e1 hits: 7.5..8.0; e2 arrives 9.75: stall 1.75, e2 9.75..10.75.
    # token 2: both hit: router 11.75, 11.75..12.75.
    # Unslowed (tests/test_timing.py): end 11.75, compute 6.0, stall 5.75.
    m = run(THREE_TOKENS, StepCosts(non_expert_s=1.0, expert_s=0.5, fetched_slowdown=1.0))
    assert m.total_time_s == 12.75
    assert m.compute_time_s == 3.0 + 2 * 1.0 + (0.5 + 1.0) + 2 * 0.5
    assert m.stall_time_s == 2.25 + 1.25 + 1.75
    assert m.per_layer.stall_s == [5.25]


def test_it_compounds_with_the_transfer_slowdown():
    # Both 1: token 0: e0 (1.0 s of work) from 3.25 at half speed while e1 is on the wire: ends 5.25; stall to 5.5;
    #   e1 5.5..6.5 (nothing in flight). token 1: router 7.5; e1 (hit, 0.5 s) at half speed 7.5..8.5; stall to 9.75;
    #   e2 9.75..10.75. token 2: 11.75..12.75.
    m = run(THREE_TOKENS, StepCosts(non_expert_s=1.0, expert_s=0.5, transfer_slowdown=1.0, fetched_slowdown=1.0))
    assert m.total_time_s == 12.75
    assert m.stall_time_s == 2.25 + 0.25 + 1.25
    assert m.compute_time_s == 12.75 - 3.75


def test_the_last_fetch_of_a_step_can_run_slower_than_the_others():
    # last_fetch_slowdown 1, fetched_slowdown 0: only the last demand fetch of a step computes in 1.0 s.
    # token 0: e0 arrives 3.25 (not the last): 3.25..3.75; stall to 5.5; e1 (the last) 5.5..6.5.
    # token 1: router 7.5; e1 hits 7.5..8.0; e2, the step's only fetch and so its last, arrives 9.75: 9.75..10.75.
    # token 2: 11.75..12.75. Had the first fetch been the slow one: e0 3.25..4.25, e1 5.5..6.0, end 12.25.
    m = run(THREE_TOKENS, StepCosts(non_expert_s=1.0, expert_s=0.5, last_fetch_slowdown=1.0))
    assert m.total_time_s == 12.75
    assert m.stall_time_s == 2.25 + 1.75 + 1.75
    assert m.compute_time_s == 3.0 + (0.5 + 1.0) + (0.5 + 1.0) + 1.0
    # unset, the last fetch takes fetched_slowdown (the test above); set equal, the same replay
    both = StepCosts(non_expert_s=1.0, expert_s=0.5, fetched_slowdown=1.0)
    assert run(THREE_TOKENS, replace(both, last_fetch_slowdown=1.0)).summary() == run(THREE_TOKENS, both).summary()
    # others slowed, the last not: token 0 e0 3.25..4.25, stall to 5.5, e1 5.5..6.0; token 1 e2 (last) 9.25..9.75
    m = run(THREE_TOKENS, replace(both, last_fetch_slowdown=0.0))
    assert (m.total_time_s, m.stall_time_s) == (11.75, 2.25 + 1.25 + 1.75)


def test_a_slowed_replay_takes_the_python_clock_and_zero_changes_nothing():
    plain = StepCosts(non_expert_s=1.0, expert_s=0.5)
    slowed = replace(plain, fetched_slowdown=1.0)
    assert run(THREE_TOKENS, slowed).summary() == run(THREE_TOKENS, slowed, compiled=False).summary()
    assert run(THREE_TOKENS, replace(plain, fetched_slowdown=0.0)).summary() == run(THREE_TOKENS, plain).summary()
    last = replace(plain, last_fetch_slowdown=1.0)
    assert run(THREE_TOKENS, last).summary() == run(THREE_TOKENS, last, compiled=False).summary()
    assert run(THREE_TOKENS, replace(plain, last_fetch_slowdown=0.0)).summary() == run(THREE_TOKENS, plain).summary()


def test_the_profile_field_is_cited_non_negative_and_defaults_to_zero():
    assert ProfileFile.model_validate(profile_doc()).to_profile().gpu.fetched_slowdown == 0.0
    doc = profile_doc(fetched_slowdown=0.375)
    doc["gpu"]["sources"]["fetched_slowdown"] = "a measurement"
    assert ProfileFile.model_validate(doc).to_profile().gpu.fetched_slowdown == 0.375
    with pytest.raises(ValueError, match="fetched_slowdown"):
        ProfileFile.model_validate(profile_doc(fetched_slowdown=0.375))
    doc["gpu"]["fetched_slowdown"] = -0.1
    with pytest.raises(ValueError, match="fetched_slowdown"):
        ProfileFile.model_validate(doc)


def test_the_last_fetch_field_defaults_to_the_fetched_one():
    assert ProfileFile.model_validate(profile_doc()).to_profile().gpu.last_fetch_slowdown is None
    doc = profile_doc(fetched_slowdown=0.25, last_fetch_slowdown=1.5)
    doc["gpu"]["sources"].update(fetched_slowdown="a measurement", last_fetch_slowdown="a measurement")
    gpu = ProfileFile.model_validate(doc).to_profile().gpu
    assert (gpu.fetched_slowdown, gpu.last_fetch_slowdown) == (0.25, 1.5)
    doc["gpu"]["last_fetch_slowdown"] = -1.0
    with pytest.raises(ValueError, match="last_fetch_slowdown"):
        ProfileFile.model_validate(doc)
