"""Check a cache policy against the contract the replay relies on, and say in plain words what it gets wrong.

Run it on your own class before replaying a trace with it (as Gymnasium's `check_env` does for environments):

    from policies.check import check_policy
    check_policy(MyCache, capacity=8)

It plays a seeded random stream of layer steps (up to `step_size` distinct keys each) through the policy exactly as
`ExpertCache.access` does, keeps its own record of what must be resident, and raises `PolicyContractError` at the
first broken promise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from simulator.cache_policy import CachePolicy


class PolicyContractError(AssertionError):
    """A cache policy broke the contract of `CachePolicy`; the message says where and how."""


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
