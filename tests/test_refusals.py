"""What 340 random configurations found (issue 14), each case reproduced: plug-in parameters refused before the replay
in one line naming the plug-in and the value, choices that cannot go together refused naming the value, and the
prefetch and link counters that did not add up."""

from __future__ import annotations

import pytest

from experiments.run import simulate
from simulator.errors import InputError
from tests.helpers import compose_run


@pytest.mark.parametrize(("overrides", "needle"), [
    (["policy=lfu-aging", "policy.period=0"], "policy=lfu-aging: period must be a positive number of accesses, got 0"),
    (["policy=lfu-aging", "policy.period=-5"], "got -5"),
    (["policy=moe-infinity", "policy.order=middle"], "policy=moe-infinity: order must be 'highest'"),
    (["prefetch=eam", "prefetch.collection_size=0"], "prefetch=eam: collection_size must be a whole number of at least 1, got 0"),
    (["prefetch=frequency", "prefetch.top_n=0"], "prefetch=frequency: top_n"),
    (["prefetch=transition", "prefetch.top_n=-1"], "got -1"),
    (["prefetch=adaptive", "prefetch.max_horizon=0"], "prefetch=adaptive: max_horizon"),
    (["prefetch=oracle", "prefetch.horizon=0"], "prefetch=oracle: horizon"),
    (["prefetch=recorded"], "has no prediction column (pred_<name>); record one with `moe-trace record`"),
    (["model.kind=mole", "prefetch=oracle"], "prefetch=oracle: model.kind=mole"),
    (["model.kind=mole", "miss=cpu"], "miss=cpu: model.kind=mole"),
    (["policy=belady", "prefetch=oracle"], "prefetch=oracle: policy=belady is offline"),
    (["policy=static", "prefetch=frequency"], "prefetch=frequency: policy=static is offline"),
    (["memory.path=gds"], "memory.path=gds: GPUDirect Storage reads experts from NVMe; it needs memory.home=nvme"),
    (["replay.timeline=[2,4]", "replay.timed=false"], "replay.timeline: a timeline records time"),
    (["replay.timeline=[4,2]"], "[4, 2] is not a window of tokens"),
    (["replay.timeline=[-1,2]"], "is not a window of tokens"),
])
def test_refused_before_the_replay_in_one_line(overrides, needle):
    with pytest.raises(InputError) as err:
        simulate(compose_run(*overrides, "replay.progress=false"))
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["prefetch=eam", "prefetch.horizon=2"],
    ["prefetch=adaptive", "prefetch.horizon=2"],
])
def test_a_key_a_prefetcher_does_not_take_is_one_line(overrides):
    with pytest.raises(InputError, match=r"prefetch.horizon: not a key of prefetch=(eam|adaptive)"):
        compose_run(*overrides)


def test_prefetch_outcomes_partition_the_issued_with_a_reset_per_sequence():
    m = simulate(compose_run("prefetch=oracle", "prefetch.horizon=2", "cache.reset_per_sequence=true",
                             "replay.timed=false", "replay.progress=false")).metrics.summary()
    assert m["prefetch_issued"] == 131400  # the case of the report, on the shipped trace
    assert m["prefetch_issued"] == m["prefetch_useful"] + m["prefetch_late"] + m["prefetch_wasted"] + m["prefetch_unused_at_end"]


def test_each_link_utilisation_describes_that_link_under_gds():
    """GDS reads go on the drive's link, not the host-to-device one: before, h2d_utilisation summed both links
    (1.0000070 here) and nvme_utilisation was 0 while NVMe moved terabytes."""
    m = simulate(compose_run("policy=arc", "prefetch=adaptive", "cache.scope=global", "cache.capacity=64",
                             "hardware=h100_pcie5", "memory.home=nvme", "memory.path=gds", "replay.progress=false",
                             "trace.path=" + _short_trace())).metrics.summary()
    assert m["bytes_nvme"] > 0 and 0.5 < m["nvme_utilisation"] <= 1.0
    assert m["h2d_utilisation"] == 0.0  # no DRAM cache: every expert comes straight off the drive
    assert 0.0 <= m["h2d_utilisation_prefetch"] <= m["h2d_utilisation"] <= 1.0


_SHORT = {}


def _short_trace() -> str:
    """The shipped trace's first 200 tokens (a quicker replay of the same routing)."""
    if not _SHORT:
        import tempfile
        from pathlib import Path

        from experiments.config import DEFAULT_TRACE
        from traces.format import TraceFile, TraceWriter

        source = TraceFile(DEFAULT_TRACE)
        path = Path(tempfile.mkdtemp()) / "short.parquet"
        with TraceWriter(path, source.meta) as out:
            chunk = next(iter(source.chunks(batch_rows=200 * source.meta.model.moe_layers)))
            out.write(chunk)
        _SHORT["path"] = str(path)
    return _SHORT["path"]
