"""Plain-Python references, written literally from their definitions: one stream, token by token, key by key.

`reference_hits`: the REFERENCE.md §4 convention of the vectorised engine (traces/locality/cache.py) for LRU, LFU
and Belady. `reference_sch_hits`: SCH as moe-lrc's code defines it (issue 11), a direct simulation of one cache
size, against which the one-pass stack algorithm (traces/locality/sch.py) is held."""

from __future__ import annotations


def judged_hits(keys: list[int], cache: set[int], seen: set[int], capacity: int, cold_credit: bool = True) -> int:
    """Hits of one token's keys judged together before any update: resident, or never seen while fewer than
    `capacity` distinct keys have been (the cold-start credit, new keys counted in router order)."""
    hits = new = 0
    for x in keys:
        if x in cache:
            hits += 1
        elif x not in seen:
            hits += cold_credit and len(seen) + new < capacity
            new += 1
    return hits


def reference_hits(tokens: list[list[int]], capacity: int, policy: str, cold_credit: bool = True) -> tuple[int, int]:
    """(hits, accesses) of one stream; tokens are lists of distinct keys in router order, -1 = no access."""
    C = capacity
    cache: set[int] = set()
    last: dict[int, int] = {}  # key -> access index of its last use (router order within a token)
    uses: dict[int, int] = {}  # key -> uses since the stream started
    seen: set[int] = set()
    hits = accesses = 0
    index = 0
    for i, token in enumerate(tokens):
        keys = [x for x in token if x >= 0]
        # 1. judge every lookup before any update
        hits += judged_hits(keys, cache, seen, C, cold_credit)
        accesses += len(keys)
        seen.update(keys)
        # 2. update: stamp and count the token's keys, insert each, evict the lowest priority while over C
        for x in token:
            index += 1
            if x >= 0:
                last[x] = index
                uses[x] = uses.get(x, 0) + 1

        def priority(e):
            if policy == "lru":
                return (last[e],)
            if policy == "lfu":
                return (uses[e], last[e])
            if policy == "belady":
                nxt = next((j for j in range(i + 1, len(tokens)) if e in tokens[j]), None)
                slot = tokens[nxt].index(e) if nxt is not None else 0
                return (-(nxt if nxt is not None else 10**9), -slot, last[e])

        for x in keys:
            cache.add(x)
            while len(cache) > C:
                cache.remove(min(cache, key=priority))
    return hits, accesses


def reference_sch_hits(tokens: list[list[int]], capacity: int, window: int) -> tuple[int, int]:
    """(hits, accesses) of SCH(m = window) with a cache of `capacity` keys on one stream.

    At token i all of the token's keys are judged against the cache (a never-seen key is a hit while fewer than C
    distinct keys have been seen). Then for each key x of the token in router order: stamp its use; if x is not
    resident insert it and, while the cache holds more than C keys, evict the resident key other than x of lowest
    priority, a key's priority being (its uses in tokens i .. i+m-1, counted from i+1 if the key was already
    processed at token i; then its last-use stamp).
    """
    C, cache, seen, last = capacity, set(), set(), {}
    hits = accesses = clock = 0
    sets = [set(token) for token in tokens]
    for i, token in enumerate(tokens):
        keys = [x for x in token if x >= 0]
        hits += judged_hits(keys, cache, seen, C)
        accesses += len(keys)
        seen.update(keys)
        done: set[int] = set()

        def priority(e):
            first = i + 1 if e in done else i
            return sum(e in sets[j] for j in range(first, min(i + window, len(tokens)))), last[e]

        for x in keys:
            clock += 1
            last[x] = clock
            done.add(x)
            if x not in cache:
                cache.add(x)
                while len(cache) > C:
                    cache.remove(min(cache - {x}, key=priority))
    return hits, accesses
