"""Differential test against libCacheSim 0.3.5: on top-1 traces our hit counts equal its hit counts exactly.

With one expert per layer step, judging a step before loading its misses is the same as libCacheSim's sequential
per-request semantics, so LRU, FIFO, LFU and Belady must agree access for access. libCacheSim reads the key stream as
an oracleGeneral binary trace (per request, little-endian and packed: uint32 clock_time, uint64 obj_id, uint32 obj_size,
int64 next_access_vtime = index of the next request to the object or -1); every object has size 1, so its
`cache_size` (bytes) counts objects. It runs in a subprocess, so that a C-level abort fails one test, not the session.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policies.registry import policy_class
from simulator.cache import ExpertCache
from simulator.model import MoEModel
from simulator.replay import replay
from traces.format import TraceChunk

pytest.importorskip("libcachesim")

REAL_TRACE = Path(__file__).parents[1].parent / "shared" / "traces" / "real" / "deepseek_v2_lite_moebeyond_prompt_1351_data.csv"

ORACLE_GENERAL = np.dtype(
    [("clock_time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access_vtime", "<i8")]
)

# our registry name -> libcachesim class
LIBCACHESIM = {"lru": "LRU", "fifo": "FIFO", "lfu": "LFU", "belady": "Belady"}

RUN_LIBCACHESIM = r"""
import json, sys
import libcachesim as lcs
path, policy, capacities = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
result = {}
for capacity in capacities:
    cache = getattr(lcs, policy)(capacity, hashpower=16)  # the default 2**24 buckets cost 0.1 s per cache
    reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
    requests = hits = 0
    for req in reader:
        requests += 1
        hits += bool(cache.get(req))
    result[capacity] = {"requests": requests, "hits": hits, "objects": cache.get_n_obj(),
                        "bytes": cache.get_occupied_byte()}
print(json.dumps(result))
"""


# ---- key streams -------------------------------------------------------------------------------------------------


def zipf_stream(n_keys: int, length: int, exponent: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_keys + 1) ** exponent
    return rng.permutation(n_keys)[rng.choice(n_keys, size=length, p=p / p.sum())]


def phase_stream(n_keys: int, length: int, working_set: int, phase: int, seed: int) -> np.ndarray:
    """A working set that moves every `phase` requests, with 10% of requests outside it (many LFU ties)."""
    rng = np.random.default_rng(seed)
    keys = np.empty(length, dtype=np.int64)
    for start in range(0, length, phase):
        hot = rng.choice(n_keys, size=working_set, replace=False)
        n = min(phase, length - start)
        keys[start : start + n] = np.where(rng.random(n) < 0.9, rng.choice(hot, size=n), rng.integers(0, n_keys, n))
    return keys


def loop_stream(n_keys: int, rounds: int) -> np.ndarray:
    return np.tile(np.arange(n_keys), rounds)


def real_layer1_top1() -> np.ndarray:
    """The first routed expert of every layer-1 row of the shared DeepSeek-V2-Lite prompt trace."""
    if not REAL_TRACE.is_file():
        pytest.skip(f"{REAL_TRACE} is not here")
    with REAL_TRACE.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows)
        return np.array([json.loads(row[3])[0] for row in rows if row[0] == "1"], dtype=np.int64)


STREAMS = {
    "zipf-64keys-s1.0": lambda: zipf_stream(64, 4000, 1.0, seed=1),
    "zipf-200keys-s0.7": lambda: zipf_stream(200, 5000, 0.7, seed=2),
    "phases-80keys": lambda: phase_stream(80, 4000, working_set=12, phase=400, seed=3),
    "loop-40keys": lambda: loop_stream(40, 50),
    "deepseek-layer1-top1": real_layer1_top1,
}


def dense(keys: np.ndarray) -> np.ndarray:
    """Renumber keys 0..distinct-1 (expert ids of a one-layer model)."""
    return np.unique(keys, return_inverse=True)[1].astype(np.int64)


def capacities(n_keys: int) -> list[int]:
    """From 2 up to half the distinct keys."""
    half = n_keys // 2
    return sorted({c for c in (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100) if c <= half} | {half})


# ---- the two sides -----------------------------------------------------------------------------------------------


def write_oracle_general(keys: np.ndarray, path: Path) -> None:
    assert ORACLE_GENERAL.itemsize == 24
    records = np.zeros(len(keys), dtype=ORACLE_GENERAL)
    records["clock_time"] = np.arange(len(keys))
    records["obj_id"] = keys + 1  # keep 0 free
    records["obj_size"] = 1
    last_seen: dict[int, int] = {}
    next_use = np.full(len(keys), -1, dtype=np.int64)
    for i in range(len(keys) - 1, -1, -1):
        key = int(keys[i])
        next_use[i] = last_seen.get(key, -1)
        last_seen[key] = i
    records["next_access_vtime"] = next_use
    path.write_bytes(records.tobytes())


def libcachesim_hits(keys: np.ndarray, policy: str, caps: list[int], tmp_path: Path) -> dict[int, int]:
    trace = tmp_path / "keys.oracleGeneral.bin"
    write_oracle_general(keys, trace)
    done = subprocess.run(
        [sys.executable, "-c", RUN_LIBCACHESIM, str(trace), policy, json.dumps(caps)],
        capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0:
        pytest.fail(f"libcachesim {policy} exited with {done.returncode} on capacities {caps}:\n{done.stderr[-2000:]}")
    result = {int(c): r for c, r in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    for capacity, r in result.items():
        assert r["requests"] == len(keys), "libcachesim did not read the whole trace"
        full = min(capacity, len(np.unique(keys)))
        assert r["objects"] == r["bytes"] == full, f"cache_size={capacity} should hold {full} objects of size 1: {r}"
    return {capacity: r["hits"] for capacity, r in result.items()}


def top1_model(n_keys: int) -> MoEModel:
    return MoEModel(name="top1", moe_layers=1, experts_per_layer=n_keys, top_k=1, shared_experts=0, hidden_size=8,
                    expert_intermediate_size=8, param_bytes=2, non_expert_params_per_layer=0)


def our_hits(keys: np.ndarray, policy: str, capacity: int) -> int:
    n = len(keys)
    chunk = TraceChunk(sequence=np.zeros(n, dtype=np.int32), token=np.arange(n, dtype=np.int32),
                       layer=np.zeros(n, dtype=np.int16), experts=keys.astype(np.int16)[:, None])
    cache = ExpertCache(policy_class(policy), capacity, "global", top1_model(int(keys.max()) + 1))
    if cache.offline:
        cache.prepare(chunk.sequence, chunk.layer, chunk.experts)
    metrics = replay([chunk], cache)
    assert metrics.accesses == n
    return metrics.hits


def reference_lfu_hits(keys, capacity: int) -> int:
    """LFU as documented, written plainly: evict the fewest uses since insertion, ties to the least recently used."""
    count: dict[int, int] = {}
    last_use: dict[int, int] = {}
    hits = 0
    for t, key in enumerate(int(k) for k in keys):
        if key in count:
            hits += 1
            count[key] += 1
        else:
            if len(count) >= capacity:
                victim = min(count, key=lambda k: (count[k], last_use[k]))
                del count[victim], last_use[victim]
            count[key] = 1
        last_use[key] = t
    return hits


# ---- tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(LIBCACHESIM))
@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_hits_equal_libcachesim_on_top1_streams(stream, policy, tmp_path):
    keys = dense(STREAMS[stream]())
    caps = capacities(int(keys.max()) + 1)
    theirs = libcachesim_hits(keys, LIBCACHESIM[policy], caps, tmp_path)
    ours = {capacity: our_hits(keys, policy, capacity) for capacity in caps}
    differ = {c: (ours[c], theirs[c]) for c in caps if ours[c] != theirs[c]}
    assert not differ, f"{policy} on {stream}: hits differ (capacity: ours, libcachesim's) {differ}"


@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_lfu_breaks_ties_towards_least_recently_used(stream):
    keys = dense(STREAMS[stream]())
    for capacity in capacities(int(keys.max()) + 1):
        assert our_hits(keys, "lfu", capacity) == reference_lfu_hits(keys, capacity), f"capacity {capacity}"


# a, b, b, a, c, a with two slots: a and b both have 2 uses when c arrives; b was used less recently, so b goes and
# the last a hits (3 hits). Breaking the tie by insertion order would evict a instead (2 hits).
TIE = np.array([0, 1, 1, 0, 2, 0])


def test_lfu_tie_example_ours():
    assert reference_lfu_hits(TIE, 2) == 3
    assert our_hits(TIE, "lfu", 2) == 3


def test_lfu_tie_example_libcachesim(tmp_path):
    """libCacheSim's LFU keeps one list per frequency, appends a key when it enters one and evicts from the head."""
    assert libcachesim_hits(TIE, "LFU", [2], tmp_path) == {2: 3}


def test_oracle_general_layout(tmp_path):
    """Our writer against the documented byte layout, field by field."""
    import struct

    path = tmp_path / "t.bin"
    write_oracle_general(np.array([5, 7, 5]), path)
    data = path.read_bytes()
    assert len(data) == 72
    assert struct.unpack("<IQIq", data[:24]) == (0, 6, 1, 2)
    assert struct.unpack("<IQIq", data[24:48]) == (1, 8, 1, -1)
    assert struct.unpack("<IQIq", data[48:]) == (2, 6, 1, -1)
