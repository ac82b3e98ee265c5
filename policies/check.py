"""Check a plug-in against the contract the replay relies on, and say in plain words what it gets wrong.

Run it on your own class before replaying a trace with it (as Gymnasium's `check_env` does for environments):

    from policies.check import check_policy, check_prefetcher, check_miss_handler
    check_policy(MyCache, capacity=8)
    check_prefetcher(MyPrefetcher)          # called with the model, as the replay builds it
    check_miss_handler(MyHandler)

`check_policy` plays a seeded random stream of layer steps (up to `step_size` distinct keys each) through the policy
exactly as `ExpertCache.access` does, keeps its own record of what must be resident, and raises
`PolicyContractError` at the first broken promise. `check_prefetcher` replays a seeded random trace with the
prefetcher, timed and untimed, and checks what it asks for; `check_miss_handler` asks the handler about random misses
and replays a trace with it. Both raise `PolicyContractError` too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from policies.lru import LRUCache
from simulator.cache import ExpertCache
from simulator.cache_policy import CachePolicy
from simulator.compute import MissCosts, StepCosts
from simulator.hardware import LinkSpec
from simulator.miss_handler import ACTIONS, LOW_PRECISION, MissHandler
from simulator.model import MoEModel
from simulator.prefetcher import FutureAccessError, Prefetcher
from simulator.replay import Timing, replay
from simulator.trace_rows import TraceChunk

CHECK_MODEL = MoEModel("contract-check", moe_layers=4, experts_per_layer=8, top_k=2, shared_experts=0, hidden_size=4,
                       expert_intermediate_size=4, param_bytes=2.0, non_expert_params_per_layer=16)
"""The small model the prefetcher and miss-handler checks replay (96 bytes per expert)."""
CHECK_COLUMN = "checker"
"""The prediction column the checks' trace offers (a prefetcher that reads recorded predictions is bound to it)."""
_TIMING = Timing(StepCosts(non_expert_s=1e-4, expert_s=5e-5), LinkSpec(bandwidth_Bps=1e6, latency_s=1e-5))


class PolicyContractError(AssertionError):
    """A plug-in broke the contract of its interface; the message says where and how."""


def check_policy(
    factory: Callable[[int], CachePolicy],
    capacity: int = 8,
    *,
    step_size: int | None = None,
    steps: int = 300,
    seed: int = 0,
) -> None:
    """Run a policy through a random step stream twice and raise `PolicyContractError` on any contract violation.

    Args:
        factory: the policy class, or any callable `capacity -> CachePolicy`; it is called twice for two fresh instances.
        capacity: slots of the cache under test.
        step_size: most keys in one layer step (the experts the router picks); default `min(4, capacity)`.
        steps: layer steps in the stream.
        seed: seeds the stream; the same seed gives the same stream.

    Checked: the cache starts empty; `hit` leaves residency unchanged; `admit` makes the key resident, keeps it within
    `capacity`, and loses no key other than the ones it returns as evicted; every eviction removes exactly one
    resident key that is not one of the current step's keys; two fresh instances given the same stream make the same
    decisions. Offline policies (`offline = True`) first get `prepare(keys, step_size)` with the whole stream.
    """
    step_size = min(4, capacity) if step_size is None else step_size
    if not 1 <= step_size <= capacity:
        raise ValueError(f"step_size must be within 1..capacity={capacity}, got {step_size}")
    stream = random_steps(capacity, step_size, steps, seed)
    first = _play(factory, capacity, step_size, stream)
    second = _play(factory, capacity, step_size, stream)
    for a, b in zip(first, second):
        if a != b:
            raise PolicyContractError(
                f"not deterministic: two fresh instances given the same stream decided differently at step {a[0]}, "
                f"key {a[1]}: first run {_outcome(a)}, second run {_outcome(b)}. Seed any randomness in __init__."
            )


def random_steps(capacity: int, step_size: int, steps: int, seed: int) -> list[list[int]]:
    """A seeded stream of layer steps over 2·capacity + step_size keys, skewed so that hits and evictions both happen.

    Most steps carry `step_size` distinct keys; some carry fewer (as rows with unrecorded experts do).
    """
    rng = np.random.default_rng(seed)
    universe = 2 * capacity + step_size
    weights = 1.0 / np.arange(1, universe + 1) ** 0.8
    weights /= weights.sum()
    stream = []
    for _ in range(steps):
        k = step_size if rng.random() < 0.8 else int(rng.integers(1, step_size + 1))
        # Now and then the popular keys change, so that policies which order by recency and by frequency disagree.
        if rng.random() < 0.02:
            weights = rng.permutation(weights)
        stream.append(rng.choice(universe, size=k, replace=False, p=weights).tolist())
    return stream


def _play(factory, capacity, step_size, stream):
    """One run; returns the decision log [(step, key, evicted keys or None for a hit)] for the determinism check."""
    try:
        policy = factory(capacity)
    except Exception as err:
        raise PolicyContractError(f"constructing the policy with capacity={capacity} raised {err!r}") from err
    for attr in ("resident", "hit", "admit", "evict"):
        if not hasattr(policy, attr):
            raise PolicyContractError(f"the policy has no attribute {attr!r}; subclass policies.base.CachePolicy")
    universe = sorted({key for step in stream for key in step})
    if getattr(policy, "offline", False):
        keys = np.array([key for step in stream for key in step], dtype=np.int64)
        _call(policy.prepare, "in prepare() with the whole stream", "prepare", keys, step_size)
    shadow: set[int] = set()  # what must be resident, from the promises the policy made so far
    if len(policy.resident) != 0:
        raise PolicyContractError(f"before any access {len(policy.resident)} keys are resident; the cache must start empty")
    observed: list[int] = []
    _observe_evictions(policy, shadow, observed)
    log = []
    for step_index, step in enumerate(stream):
        for key in step:
            where = f"at step {step_index} (keys {step}), key {key}"
            if key in policy.resident:
                if key not in shadow:
                    raise PolicyContractError(f"{where}: `key in resident` is True, but the key was never admitted or was evicted")
                size = len(policy.resident)
                _call(policy.hit, where, "hit", key)
                if len(policy.resident) != size or key not in policy.resident:
                    raise PolicyContractError(
                        f"{where}: hit() changed residency (size {size} -> {len(policy.resident)}, key still resident: "
                        f"{key in policy.resident}); a hit only records a use"
                    )
                log.append((step_index, key, None))
            else:
                if key in shadow:
                    raise PolicyContractError(f"{where}: the key was admitted and never evicted, but `key in resident` is False")
                observed.clear()
                evicted = _call(policy.admit, where, "admit", key, step)
                evicted = list(evicted) if evicted is not None else []
                if observed and sorted(observed) != sorted(evicted):
                    raise PolicyContractError(
                        f"{where}: admit() returned evicted keys {evicted}, but evict() removed {observed}; "
                        "admit must return exactly the keys it evicted"
                    )
                for victim in evicted:
                    if victim in step:
                        raise PolicyContractError(
                            f"{where}: admit() evicted {victim}, a key of the current step {step}; the GPU needs every "
                            "expert of the step resident, so these keys are protected"
                        )
                    if victim not in shadow:
                        raise PolicyContractError(f"{where}: admit() reports evicting {victim}, which was not resident")
                    if victim in policy.resident:
                        raise PolicyContractError(f"{where}: admit() reports evicting {victim}, but it is still resident")
                if len(set(evicted)) != len(evicted):
                    raise PolicyContractError(f"{where}: admit() reports evicting the same key twice: {evicted}")
                shadow.difference_update(evicted)
                shadow.add(key)
                if key not in policy.resident:
                    raise PolicyContractError(f"{where}: after admit() the key is not resident; a missed expert is always loaded")
                if len(policy.resident) > capacity:
                    raise PolicyContractError(
                        f"{where}: after admit() {len(policy.resident)} keys are resident, more than capacity={capacity}"
                    )
                log.append((step_index, key, tuple(evicted)))
        _check_residency(policy, shadow, universe, capacity, f"after step {step_index} (keys {step})")
    return log


def _observe_evictions(policy, shadow, observed):
    """Wrap the instance's `evict` to check each eviction where it happens (admit calls `self.evict`)."""
    inner = policy.evict

    def evict(protected):
        before = len(policy.resident)
        key = inner(protected)
        where = f"evict(protected={list(protected)})"
        if key in protected:
            raise PolicyContractError(
                f"{where} returned {key}, a protected key (an expert of the current step); it must pick another victim"
            )
        if key not in shadow or key in observed:
            raise PolicyContractError(f"{where} returned {key}, which was not resident")
        if key in policy.resident:
            raise PolicyContractError(f"{where} returned {key} but left it resident; evict must remove the key it returns")
        if len(policy.resident) != before - 1:
            raise PolicyContractError(
                f"{where} returned {key} but the resident count went from {before} to {len(policy.resident)}; "
                "evict removes exactly one key"
            )
        observed.append(key)
        return key

    try:
        policy.evict = evict
    except AttributeError:
        pass  # a class with __slots__: evictions are then checked through admit's return value only


def _check_residency(policy, shadow, universe, capacity, where):
    size = len(policy.resident)
    if size > capacity:
        raise PolicyContractError(f"{where}: {size} keys are resident, more than capacity={capacity}")
    if size != len(shadow):
        raise PolicyContractError(
            f"{where}: {size} keys are resident, but {len(shadow)} were admitted and not reported evicted; "
            "admit must return every key it evicts, and nothing else may change residency"
        )
    for key in universe:
        if (key in policy.resident) != (key in shadow):
            state = "resident although it was evicted or never admitted" if key in policy.resident else "not resident although it was admitted and never evicted"
            raise PolicyContractError(f"{where}: key {key} is {state}")


def _call(method, where, name, *args):
    try:
        return method(*args)
    except PolicyContractError as err:
        raise PolicyContractError(f"{where}: {err}") from None
    except Exception as err:
        raise PolicyContractError(f"{where}: {name}() raised {err!r}") from err


def _outcome(entry) -> str:
    return "hit" if entry[2] is None else f"miss evicting {list(entry[2])}"


def random_trace(model: MoEModel, sequences: int, tokens: int, seed: int, *, columns=(), weights: bool = False) -> TraceChunk:
    """Seeded random routing for `model` (skewed, so that caches hit and miss), with random gate weights and random
    recorded predictions under each name of `columns` if asked."""
    rng = np.random.default_rng(seed)
    rows = sequences * tokens * model.moe_layers
    popularity = 1.0 / np.arange(1, model.experts_per_layer + 1)
    popularity /= popularity.sum()
    experts = np.array([rng.choice(model.experts_per_layer, model.top_k, replace=False, p=popularity) for _ in range(rows)],
                       dtype=np.int16)
    gates = rng.random((rows, model.top_k)).astype(np.float32) if weights else None
    return TraceChunk(
        sequence=np.repeat(np.arange(sequences, dtype=np.int32), tokens * model.moe_layers),
        token=np.tile(np.repeat(np.arange(tokens, dtype=np.int32), model.moe_layers), sequences),
        layer=np.tile(np.arange(model.moe_layers, dtype=np.int16), sequences * tokens),
        experts=experts,
        weights=gates,
        predictions={name: rng.integers(0, model.experts_per_layer, (rows, model.top_k)).tolist() for name in columns},
    )


def check_prefetcher(factory: Callable[[MoEModel], Prefetcher], *, model: MoEModel = CHECK_MODEL, seed: int = 0) -> None:
    """Replay a seeded random trace with fresh prefetchers from `factory(model)` and raise `PolicyContractError` on
    any contract violation.

    Checked: the factory builds a `Prefetcher`; `bind_trace` accepts a trace whose one prediction column is
    `CHECK_COLUMN` and leaves `predictions` naming only columns the trace has; `fit` accepts a training trace;
    `at_token_start` and `after_router` return (layer, expert) pairs of ints within the model; a prefetcher that does
    not declare `oracle = True` never reads `view.future()`; two fresh instances given the same trace ask for the same
    experts, untimed and timed.
    """
    logs = []
    for timing in (None, _TIMING, None, _TIMING):
        prefetcher = _build(factory, model)
        if not isinstance(prefetcher, Prefetcher):
            raise PolicyContractError(f"the factory built a {type(prefetcher).__name__}; subclass simulator.prefetcher.Prefetcher")
        _call(prefetcher.bind_trace, "bind_trace", "bind_trace", [CHECK_COLUMN])
        unknown = [name for name in prefetcher.predictions if name != CHECK_COLUMN]
        if unknown:
            raise PolicyContractError(f"after bind_trace({[CHECK_COLUMN]!r}) the prefetcher reads prediction columns "
                                      f"{unknown} that the trace does not have")
        columns = tuple(prefetcher.predictions)
        _call(prefetcher.fit, "fit", "fit", [random_trace(model, 2, 6, seed + 1, columns=columns)])
        log: list = []
        _record_requests(prefetcher, model, log)
        cache = ExpertCache(LRUCache, model.top_k + 1, "layer", model)
        try:
            replay([random_trace(model, 3, 12, seed, columns=columns)], cache, timing, prefetcher=prefetcher)
        except FutureAccessError:
            raise PolicyContractError("the prefetcher read view.future() but does not declare oracle = True; only "
                                      "upper-bound prefetchers may see routing that has not happened") from None
        logs.append(log)
    for first, second, mode in ((logs[0], logs[2], "untimed"), (logs[1], logs[3], "timed")):
        for a, b in zip(first, second):
            if a != b:
                raise PolicyContractError(f"not deterministic ({mode}): two fresh instances given the same trace asked "
                                          f"differently at {a[0]}: {list(a[1])} then {list(b[1])}. Seed any randomness.")
        if len(first) != len(second):
            raise PolicyContractError(f"not deterministic ({mode}): two fresh instances were asked a different number of times")


def _build(factory, *args):
    try:
        return factory(*args)
    except Exception as err:
        raise PolicyContractError(f"constructing the plug-in raised {err!r}") from err


def _record_requests(prefetcher: Prefetcher, model: MoEModel, log: list) -> None:
    """Wrap the instance's two prefetch points to check and log what they return."""

    def checked(point):
        inner = getattr(prefetcher, point)

        def ask(view):
            where = f"{point} at sequence {view.sequence}, token {view.position}, layer {view.layer}"
            pairs = inner(view)
            pairs = list(pairs) if pairs is not None else None
            if pairs is None:
                raise PolicyContractError(f"{where} returned None; return a sequence of (layer, expert) pairs, () for none")
            for pair in pairs:
                if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(v, int | np.integer) for v in pair)):
                    raise PolicyContractError(f"{where} returned {pair!r}; each request is a (layer, expert) pair of ints")
                layer, expert = pair
                if not (0 <= layer < model.moe_layers and 0 <= expert < model.experts_per_layer):
                    raise PolicyContractError(f"{where} asked for (layer {layer}, expert {expert}), outside the model's "
                                              f"{model.moe_layers} layers × {model.experts_per_layer} experts")
            log.append((where, [tuple(int(v) for v in pair) for pair in pairs]))
            return pairs

        return ask

    prefetcher.at_token_start = checked("at_token_start")
    prefetcher.after_router = checked("after_router")


def check_miss_handler(factory: Callable[[], MissHandler], *, model: MoEModel = CHECK_MODEL, seed: int = 0) -> None:
    """Ask fresh handlers from `factory()` about seeded random misses, replay a trace with one, and raise
    `PolicyContractError` on any contract violation.

    Checked: the factory builds a `MissHandler`; `decide` returns (action, fraction) with an action of
    simulator.miss_handler.ACTIONS and a fraction in [0, 1] (in (0, 1] for a low-precision load); it accepts a weight
    of None unless it declares `needs_weights`; two fresh instances decide alike; a timed and an untimed replay with
    it run to the end.
    """
    rng = np.random.default_rng(seed)
    costs = [MissCosts(transfer_s=float(t), cpu_expert_s=float(c), activation_round_trip_s=float(a))
             for t, c, a in rng.random((8, 3)) * 1e-3]
    first, second = _build(factory), _build(factory)
    for handler in (first, second):
        if not isinstance(handler, MissHandler):
            raise PolicyContractError(f"the factory built a {type(handler).__name__}; subclass simulator.miss_handler.MissHandler")
    for i in range(200):
        layer, expert, rank = int(rng.integers(model.moe_layers)), int(rng.integers(model.experts_per_layer)), int(rng.integers(model.top_k))
        weight = float(rng.random()) if first.needs_weights or i % 2 else None
        cost = costs[i % len(costs)]
        where = f"decide(layer={layer}, expert={expert}, rank={rank}, weight={weight}, costs={cost})"
        answer = _call(first.decide, where, "decide", layer, expert, rank, weight, cost)
        if not (isinstance(answer, tuple) and len(answer) == 2):
            raise PolicyContractError(f"{where} returned {answer!r}; return (action, byte fraction)")
        action, fraction = answer
        if action not in ACTIONS:
            raise PolicyContractError(f"{where} returned action {action!r}; known actions: {', '.join(ACTIONS)}")
        if not (0.0 <= fraction <= 1.0) or (action == LOW_PRECISION and fraction == 0.0):
            raise PolicyContractError(f"{where} returned byte fraction {fraction!r}; it is within [0, 1], and above 0 "
                                      "for a low-precision load")
        again = _call(second.decide, where, "decide", layer, expert, rank, weight, cost)
        if again != answer:
            raise PolicyContractError(f"not deterministic: {where} gave {answer!r}, then {again!r} from a fresh instance")
    for timing in (None, _TIMING):
        cache = ExpertCache(LRUCache, model.top_k, "layer", model)
        trace = random_trace(model, 2, 10, seed, weights=first.needs_weights)
        handler = _build(factory)
        _call(lambda: replay([trace], cache, timing, miss_handler=handler, miss_costs=costs[0]),
              "replaying a trace with the handler", "replay")

