"""SRP, Segment Routing best Performance (REFERENCE.md §4): how well "serve expert e for the whole window iff at
least j of the window's m tokens choose it" can do, at the best threshold j.

Over every window of m consecutive tokens of a sequence (windows never cross sequences; a sequence shorter than
m has none) and every expert, c = how many of the window's tokens chose it; N[c] counts (window, expert) pairs.
Then matches_j = Σ_{c≥j} c·N[c], predictions_j = m·Σ_{c≥j} N[c], activations = Σ c·N[c],
F1_j = 2·matches_j / (predictions_j + activations), SRP(m) = max over j = 1..m of F1_j.
Per layer the pairs are that layer's experts; at model level, all (layer, expert) pairs: the layers' N[c] summed.
"""

from __future__ import annotations

import numpy as np

from traces.locality.grid import RoutingGrid


def window_histograms(grid: RoutingGrid, m: int) -> np.ndarray:
    """N[c] per sequence and layer: [sequences, L, m+1] int64."""
    L, E = grid.model.moe_layers, grid.model.experts_per_layer
    out = np.zeros((grid.sequences, L, m + 1), dtype=np.int64)
    layer_base = (np.arange(L) * (m + 1))[None, :, None]
    for s, (a, b) in enumerate(zip(grid.starts[:-1], grid.starts[1:])):
        T = int(b - a)
        if T < m:
            continue
        ids = grid.experts[a:b]
        cum = np.zeros((T + 1, L, E + 1), dtype=np.int32)
        t_idx = np.arange(T)[:, None, None]
        l_idx = np.arange(L)[None, :, None]
        cum[1:][t_idx, l_idx, np.where(ids >= 0, ids, E)] = 1
        np.cumsum(cum, axis=0, out=cum)
        counts = cum[m:, :, :E] - cum[:-m, :, :E]  # [windows, L, E]
        out[s] = np.bincount((counts + layer_base).ravel(), minlength=L * (m + 1)).reshape(L, m + 1)
    return out


def f1_by_threshold(hist: np.ndarray) -> np.ndarray:
    """F1_j for j = 1..m from N[c] (last axis, c = 0..m); leading axes are kept."""
    m = hist.shape[-1] - 1
    c = np.arange(m + 1)
    weighted = hist * c
    matches = np.flip(np.cumsum(np.flip(weighted, -1), -1), -1)[..., 1:]  # Σ_{c≥j} c·N[c], j = 1..m
    pairs = np.flip(np.cumsum(np.flip(hist, -1), -1), -1)[..., 1:]
    activations = weighted.sum(axis=-1, keepdims=True)
    denominator = m * pairs + activations
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * matches / np.where(denominator > 0, denominator, 1), np.nan)


def srp(hist: np.ndarray) -> np.ndarray:
    """SRP = max_j F1_j (NaN where there is no window)."""
    f1 = f1_by_threshold(hist)
    empty = np.isnan(f1).all(axis=-1)
    return np.where(empty, np.nan, np.nanmax(np.where(np.isnan(f1), -1, f1), axis=-1))
