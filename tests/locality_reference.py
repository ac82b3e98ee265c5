"""Plain-Python reference of the REFERENCE.md §4 cache convention, written literally from its text: one stream,
token by token, key by key. The vectorised engine (traces/locality/cache.py) must agree with it exactly."""

from __future__ import annotations


def reference_hits(tokens: list[list[int]], capacity: int, policy: str, window: int | None = None,
                   cold_credit: bool = True) -> tuple[int, int]:
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
        new_seen = 0
        for x in keys:
            accesses += 1
            if x in cache:
                hits += 1
            elif x not in seen:
                if cold_credit and len(seen) + new_seen < C:
                    hits += 1
                new_seen += 1
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
            # sch: uses in tokens i+1 .. i+window-1
            return (sum(e in tokens[j] for j in range(i + 1, min(i + window, len(tokens)))), last[e])

        for x in keys:
            cache.add(x)
            while len(cache) > C:
                cache.remove(min(cache, key=priority))
    return hits, accesses
