"""The compiled twins (policies/compiled/) decide exactly as the Python policy classes they stand for.

Each shipped policy that declares a twin is replayed hit-rate only twice, through the twin and through its Python
hooks (`replay(..., compiled=False)`), on the shipped trace, the shared real traces (where ../shared is present) and
hypothesis' random traces, in both scopes and at several capacities; every counter must be equal. Each online
policy's twin is also held against `ExpertCache.access` on random batched steps (simulator.serving's U: rows wider
than top_k, many with more keys than the cache has slots), hit flag by hit flag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.registry import POLICIES, policy_class
from simulator.cache import ExpertCache
from simulator.compiled_policy import compiled_twin
from simulator.model import MoEModel
from simulator.replay import replay
from traces.format import TraceChunk, TraceFile

DEFAULT_TRACE = Path(__file__).parents[1] / "traces" / "data" / "default.parquet"
TWINNED = sorted(name for name in POLICIES if policy_class(name).__dict__.get("compiled"))
ONLINE_TWINNED = [name for name in TWINNED if not policy_class(name).offline]  # batched serving refuses offline ones


def both(trace: TraceChunk, model: MoEModel, name: str, capacity: int, scope: str, rows: int = 1 << 12, timing=None):
    """(twin's metrics, Python's metrics) of one replay (hit-rate only, or `timing`'s), the trace cut into chunks of
    `rows`."""
    out = []
    for compiled in (True, False):
        cache = ExpertCache(lambda c: policy_class(name)(c), capacity, scope, model)
        if cache.offline:
            cache.prepare(trace.sequence, trace.layer, trace.experts)
        chunks = [TraceChunk(trace.sequence[i:i + rows], trace.token[i:i + rows], trace.layer[i:i + rows],
                             trace.experts[i:i + rows]) for i in range(0, len(trace), rows)]
        metrics = replay(chunks, cache, timing, compiled=compiled)
        assert (cache.twin is not None) == compiled
        out.append(metrics)
    return out


def assert_same(twin, python):
    assert twin.summary() == python.summary()
    assert twin.per_layer == python.per_layer


def test_every_listed_policy_has_a_twin():
    assert set(TWINNED) >= {"lru", "fifo", "lfu", "belady", "static"}
    for name in TWINNED:
        assert compiled_twin(policy_class(name)(4)) is not None


def test_a_subclass_inherits_no_twin():
    class MyLRU(policy_class("lru")):
        def hit(self, key):
            pass

    assert compiled_twin(MyLRU(4)) is None


def load(path: Path, rows: int) -> tuple[TraceChunk, MoEModel]:
    trace = TraceFile(path)
    chunk = next(trace.chunks(batch_rows=rows))
    return chunk, trace.meta.model


@pytest.mark.parametrize("name", TWINNED)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_twin_equals_python_on_the_shipped_trace(name, scope):
    trace, model = load(DEFAULT_TRACE, 30_000)
    per_layer = [model.top_k, 16, model.experts_per_layer - 3]
    for capacity in (per_layer if scope == "layer" else [c * model.moe_layers // 2 for c in per_layer]):
        assert_same(*both(trace, model, name, max(capacity, model.top_k), scope))


@pytest.fixture(scope="module")
def real_traces(shared_traces, tmp_path_factory):
    from traces.importers import moe_beyond, vllm_jsonl

    out = tmp_path_factory.mktemp("real")
    moe_beyond.import_files([shared_traces / "deepseek_v2_lite_moebeyond_prompt_1351_data.csv"], out / "ds.parquet")
    vllm_jsonl.import_files([shared_traces / "mixtral_8x7b_fp8_speculative_moe_routing_raw.jsonl"], out / "mx.parquet")
    return [load(out / "ds.parquet", 20_000), load(out / "mx.parquet", 20_000)]


@pytest.mark.parametrize("name", TWINNED)
def test_twin_equals_python_on_real_traces(name, real_traces):
    for trace, model in real_traces:
        for scope, capacity in (("layer", model.top_k + 1), ("layer", model.experts_per_layer // 2),
                                ("global", model.total_experts // 3)):
            assert_same(*both(trace, model, name, capacity, scope))


@st.composite
def cases(draw):
    layers = draw(st.integers(1, 4))
    experts = draw(st.integers(2, 12))
    top_k = draw(st.integers(1, min(4, experts)))
    model = MoEModel("random", layers, experts, top_k, 0, 2, 2, 2.0, 0)
    tokens = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    rows = tokens * layers
    skew = rng.random(experts) ** 3 + 1e-3
    routed = np.array([rng.choice(experts, top_k, replace=False, p=skew / skew.sum()) for _ in range(rows)],
                      dtype=np.int16)
    routed[rng.random(routed.shape) < draw(st.sampled_from([0.0, 0.2]))] = -1  # unrecorded experts
    sequence = np.sort(rng.integers(0, 3, tokens)).astype(np.int32).repeat(layers)
    trace = TraceChunk(sequence, np.arange(tokens, dtype=np.int32).repeat(layers),
                       np.tile(np.arange(layers, dtype=np.int16), tokens), routed)
    scope = draw(st.sampled_from(["layer", "global"]))
    limit = experts if scope == "layer" else experts * layers
    return trace, model, scope, draw(st.integers(top_k, limit)), draw(st.integers(1, 9))


@pytest.mark.parametrize("name", TWINNED)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_twin_equals_python_on_random_traces(name, case):
    trace, model, scope, capacity, rows = case
    assert_same(*both(trace, model, name, capacity, scope, rows))


def test_a_cache_judged_by_its_twin_refuses_python_steps():
    model = MoEModel("m", 1, 4, 1, 0, 2, 2, 2.0, 0)
    trace = TraceChunk(np.zeros(3, np.int32), np.arange(3, dtype=np.int32), np.zeros(3, np.int16),
                       np.array([[0], [1], [0]], np.int16))
    cache = ExpertCache(lambda c: policy_class("lru")(c), 2, "layer", model)
    assert replay([trace], cache, None).hits == 1
    assert replay([trace], cache, None).hits == 3  # the twin carries the state on
    with pytest.raises(RuntimeError, match="compiled twin"):
        cache.access(0, [2])


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_random_twin_honours_the_seed(scope):
    trace, model = load(DEFAULT_TRACE, 30_000)
    capacity = 16 if scope == "layer" else 8 * model.moe_layers
    out = []
    for compiled in (True, False):
        cache = ExpertCache(lambda c: policy_class("random")(c, seed=7), capacity, scope, model)
        out.append(replay([trace], cache, None, compiled=compiled))
        assert (cache.twin is not None) == compiled
    assert_same(*out)
    seed0 = both(trace, model, "random", capacity, scope, rows=len(trace))[0]
    assert out[0].summary() != seed0.summary()  # the seed changes the draws


# -- batched steps: rows of any width, overfull ones by ExpertCache._access_overfull -----------------------------------


def python_judge(cache: ExpertCache, layer: np.ndarray, experts: np.ndarray) -> tuple[np.ndarray, int]:
    """What `CompiledPolicy.judge` should give, from `ExpertCache.access` row by row: the hit flags (resident before
    the step) and -1, or the row at which the policy raised (rows from there on are left unjudged)."""
    hits = np.zeros(experts.shape, dtype=np.bool_)
    for r in range(len(layer)):
        valid = [int(e) for e in experts[r] if e >= 0]
        try:
            missed = set(cache.access(int(layer[r]), valid))
        except RuntimeError as error:
            assert "protected" in str(error)
            return hits, r
        hits[r] = (experts[r] >= 0) & ~np.isin(experts[r], list(missed))
    return hits, -1


def twin_judge(cache: ExpertCache, layer: np.ndarray, experts: np.ndarray, cuts: list[int]) -> tuple[np.ndarray, int]:
    """The twin's hit flags and return code, the rows judged in chunks split at `cuts`."""
    twin = cache.compiled()
    hits = np.zeros(experts.shape, dtype=np.bool_)
    bounds = [0, *sorted(set(cuts)), len(layer)]
    for lo, hi in zip(bounds, bounds[1:]):
        if lo < hi:
            code = twin.judge(layer[lo:hi], experts[lo:hi], hits[lo:hi])
            if code >= 0:
                return hits, lo + code
    return hits, -1


@st.composite
def batched_cases(draw):
    """Random batched layer steps: each row a random layer and 1..3x capacity distinct experts (skewed popularity,
    so that keys come back), at random positions of a row padded with -1; small caches, so that many rows are
    overfull and many are not."""
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 16))
    model = MoEModel("random", layers, experts, 1, 0, 2, 2, 2.0, 0)
    scope = draw(st.sampled_from(["layer", "global"]))
    capacity = draw(st.integers(1, experts))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    rows = draw(st.integers(1, 60))
    counts = rng.integers(1, min(experts, 3 * capacity) + 1, rows)
    width = int(counts.max()) + draw(st.integers(0, 2))
    skew = rng.random(experts) ** 3 + 1e-3
    routed = np.full((rows, width), -1, dtype=np.int16)
    for r, n in enumerate(counts):
        routed[r, np.sort(rng.choice(width, n, replace=False))] = rng.choice(experts, n, replace=False,
                                                                              p=skew / skew.sum())
    layer = rng.integers(0, layers, rows).astype(np.int16)
    cuts = rng.integers(0, rows + 1, draw(st.integers(0, 3))).tolist()
    return model, scope, capacity, layer, routed, cuts


@pytest.mark.parametrize("name", ONLINE_TWINNED)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=batched_cases())
def test_twin_equals_python_on_batched_steps(name, case):
    model, scope, capacity, layer, experts, cuts = case
    make = lambda c: policy_class(name)(c)  # noqa: E731
    want, want_code = python_judge(ExpertCache(make, capacity, scope, model), layer, experts)
    got, code = twin_judge(ExpertCache(make, capacity, scope, model), layer, experts, cuts)
    assert code == want_code
    judged = len(layer) if code < 0 else code
    np.testing.assert_array_equal(got[:judged], want[:judged])


def test_lru_twin_on_an_overfull_step_by_hand():
    """LRU, 3 slots, one layer. Row 0 loads 0 1 2. Row 1 has 5 keys (overfull): its residents 1 and 0 are used first
    (order 2 1 0), then 3, 4 and 5 are loaded, evicting 2, 1 and 0, the step's own hits included (the token-by-token
    rule would find every resident protected). Row 2 (2 keys, not overfull) is judged key by key: 0 evicts 3, then 4
    hits (order 5 0 4). Row 3 (4 keys around a gap) hits 5 (order 0 4 5), then 3, 1 and 2 evict 0, 4 and 5. Row 4
    hits all three; row 5 misses all three (3 1 2 leave), leaving 5 0 4."""
    model = MoEModel("m", 1, 8, 1, 0, 2, 2, 2.0, 0)
    experts = np.array([[0, 1, 2, -1, -1],
                        [3, 1, 4, 5, 0],
                        [0, 4, -1, -1, -1],
                        [5, 3, -1, 1, 2],
                        [3, 1, 2, -1, -1],
                        [5, 0, 4, -1, -1]], dtype=np.int16)
    want = np.array([[0, 0, 0, 0, 0],
                     [0, 1, 0, 0, 1],
                     [0, 1, 0, 0, 0],
                     [1, 0, 0, 0, 0],
                     [1, 1, 1, 0, 0],
                     [0, 0, 0, 0, 0]], dtype=np.bool_)
    layer = np.zeros(len(experts), dtype=np.int16)
    make = lambda c: policy_class("lru")(c)  # noqa: E731
    python = ExpertCache(make, 3, "layer", model)
    hits, code = python_judge(python, layer, experts)
    assert code == -1 and (hits == want).all()
    assert list(python.policies[0].resident) == [5, 0, 4]
    cache = ExpertCache(make, 3, "layer", model)
    hits, code = twin_judge(cache, layer, experts, [])
    assert code == -1 and (hits == want).all()
    assert cache.twin.resident[0].nonzero()[0].tolist() == [0, 4, 5]
