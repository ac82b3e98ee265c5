"""Descriptive routing statistics: popularity, consecutive-token overlap, cross-layer co-activation, reuse distance.

  popularity           per layer, accesses per expert; entropy in bits (uniform = log2 E) and the access share of
                       the top quarter of experts
  consecutive overlap  per layer, the mean fraction of a token's experts that the previous token of the same
                       sequence also chose (pairs where either recorded nothing are left out); this is the LRU hit
                       rate at C = k with a persisting cache
  co-activation        for layers l and l+1, how often expert a at l and expert b at l+1 serve the same token; its
                       summary is the share of layer l+1's experts found among the top-k of Σ_{a ∈ S_l} co[a, ·]
                       (a "next layer from this layer's experts" predictor fitted in-sample), beside the share found
                       among layer l+1's k most popular experts
  reuse distance       per layer, the LRU stack distance of each access (cache.lru_distances), per-sequence reset
"""

from __future__ import annotations

import numpy as np

from traces.locality.grid import RoutingGrid

TOP_FRACTION = 0.25
"""Popularity is reported as the access share of the top quarter of experts (16 of 64, 2 of 8)."""


def top_experts(experts_per_layer: int) -> int:
    """How many experts the top share counts: the top quarter, at least one."""
    return max(1, int(round(experts_per_layer * TOP_FRACTION)))


def access_counts(layer: np.ndarray, experts: np.ndarray, layers: int, experts_per_layer: int) -> np.ndarray:
    """Accesses per (layer, expert), [layers, experts_per_layer] int64, of the expert ids `experts` (-1: none) at
    the MoE layers `layer` (broadcast against them)."""
    key = layer * experts_per_layer + experts
    return np.bincount(key[experts >= 0], minlength=layers * experts_per_layer).reshape(layers, experts_per_layer)


def popularity(grid: RoutingGrid) -> np.ndarray:
    """Accesses per (layer, expert): [L, E] int64."""
    L, E = grid.model.moe_layers, grid.model.experts_per_layer
    return access_counts(np.arange(L)[None, :, None], grid.experts, L, E)


def entropy_bits(counts: np.ndarray) -> np.ndarray:
    p = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1)
    return -(p * np.log2(np.where(p > 0, p, 1))).sum(axis=-1)


def top_share(counts: np.ndarray, top: int) -> np.ndarray:
    return -np.sort(-counts, axis=-1)[..., :top].sum(axis=-1) / np.maximum(counts.sum(axis=-1), 1)


def consecutive_overlap(grid: RoutingGrid) -> np.ndarray:
    """Per layer, mean fraction of a token's recorded experts also chosen by the previous token of its sequence."""
    ids = grid.experts
    first = np.zeros(len(ids), dtype=bool)
    first[grid.starts[:-1]] = True
    cur, prev = ids[1:], ids[:-1]
    pair = ~first[1:]
    shared, recorded, counted = overlap_counts(cur, prev)
    keep = pair[:, None] & counted
    frac = np.where(keep, shared / np.maximum(recorded, 1), 0.0)
    with np.errstate(invalid="ignore"):
        return frac.sum(axis=0) / keep.sum(axis=0)


def overlap_counts(cur: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows of expert ids `cur` (last axis the top_k slots, -1 none) and their predecessors `prev`: how many of
    a row's recorded experts the predecessor also chose, how many it recorded, and whether the pair counts (both
    recorded something)."""
    recorded = (cur >= 0).sum(axis=-1)
    shared = ((cur[..., :, None] == prev[..., None, :]) & (cur >= 0)[..., :, None]).any(axis=-1).sum(axis=-1)
    return shared, recorded, (recorded > 0) & (prev >= 0).any(axis=-1)


def coactivation(grid: RoutingGrid) -> np.ndarray:
    """co[l, a, b]: tokens that chose a at layer l and b at layer l+1: [L-1, E, E] int64."""
    L, E, k = grid.model.moe_layers, grid.model.experts_per_layer, grid.model.top_k
    out = np.zeros((max(L - 1, 0), E, E), dtype=np.int64)
    for layer in range(L - 1):
        a, b = grid.experts[:, layer], grid.experts[:, layer + 1]
        pairs = (a[:, :, None] * E + b[:, None, :]).reshape(-1)
        ok = ((a >= 0)[:, :, None] & (b >= 0)[:, None, :]).reshape(-1)
        out[layer] = np.bincount(pairs[ok], minlength=E * E).reshape(E, E)
    return out


def next_layer_predictability(grid: RoutingGrid, co: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per layer l ≥ 1 (NaN at 0): share of layer l's accesses among the top-k of Σ_{a ∈ S_{l-1}} co[l-1, a, ·], and
    among layer l's k most popular experts."""
    L, E, k = grid.model.moe_layers, grid.model.experts_per_layer, grid.model.top_k
    by_coactivation, by_popularity = np.full(L, np.nan), np.full(L, np.nan)
    for layer in range(1, L):
        below, here = grid.experts[:, layer - 1], grid.experts[:, layer]
        rows = (below >= 0).any(axis=1) & (here >= 0).any(axis=1)
        below, here = below[rows], here[rows]
        if not len(here):
            continue
        table = np.vstack([co[layer - 1], np.zeros((1, E), dtype=np.int64)])  # row E: the sink for -1
        score = table[np.where(below >= 0, below, E)].sum(axis=1).astype(np.float64)
        score += counts[layer] * 1e-9  # ties towards the popular
        predicted = np.argpartition(-score, k - 1, axis=1)[:, :k]
        valid = here >= 0
        found = (here[:, :, None] == predicted[:, None, :]).any(axis=2) & valid
        by_coactivation[layer] = found.sum() / valid.sum()
        popular = np.argsort(-counts[layer], kind="stable")[:k]
        by_popularity[layer] = (np.isin(here, popular) & valid).sum() / valid.sum()
    return by_coactivation, by_popularity
