"""Synthetic traces fitted to a real one: `moe-trace synth --fit REAL.parquet`.

The generator of `traces/synth.py` has three global knobs; a real trace needs per-layer numbers. This one is an
LRU-stack model with popularity and cross-layer terms, whose parameters are estimated from the real trace:

  position_prob  per layer l and LRU stack position d < D (D = depth), the probability that a token chooses the
                 expert at position d of the layer's recency stack. Estimated as k·h_l(d), where h_l(d) is the
                 share of the real layer's accesses at LRU stack distance d (cache kept across sequences, as
                 `moe-sim cache.scope=layer` replays it). This is the temporal reuse.
  popularity     per layer, the weights of the remaining choices ("deep": an expert at stack position ≥ D),
                 started from the real access shares and corrected once so the synthetic shares match them.
  follow, follow_boost
                 cross-layer correlation: follow[l][a] is the layer-l expert most often co-activated with expert a
                 at layer l-1; a deep choice at layer l gives the experts follow[l][S_{l-1}] of the same token
                 (1 + follow_boost[l]) times their weight, the boost set so the share of deep accesses that follow
                 the map matches the real trace's.

Each (token, layer) draws its k distinct experts by systematic sampling over the stack positions (probabilities
position_prob, in a random order) and "deep" units carrying the remaining mass k - Σ_d position_prob[d], so exactly k
are chosen and position d is chosen with probability position_prob[d]; deep units are filled by weighted sampling
without replacement among the experts at positions ≥ D. The chosen experts take the router slots in a random order
and move to the top of the stack, the last slot most recent. By construction a per-layer LRU cache of C ≤ D slots
then hits with probability Σ_{d<C} position_prob[d] / k, the real trace's rate, whatever the length of the output;
popularity and cross-layer co-activation are matched approximately. The stacks persist across sequences (sequence
boundaries are labels in one stream per layer), like the cache they are fitted to. Cells of one anti-diagonal
(token + layer constant) are independent, so the loop runs over diagonals, vectorised across layers.

A fit is a small JSON document (`save_fit` / `load_fit`): numbers that describe the routing, not the routing itself.
Output is a pure function of the fit and the arguments: the same ones give byte-identical trace files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.format import TraceChunk, TraceMeta, TraceWriter, validate_model_dict
from traces.locality import cache, stats
from traces.locality.grid import RoutingGrid, load_grid
from traces.synth import CHUNK_ROWS, _bfloat16

GENERATOR_VERSION = 1
FIT_VERSION = 1
FIT_DEPTH_RHO = 4
"""Stack positions are fitted exactly up to ρ·k = 4·k (capped at E - k so deep choices always have room)."""
CALIBRATION_TOKENS = 12_000
DIGITS = 6


@dataclass(frozen=True)
class RoutingFit:
    """Fitted generator parameters (see the module docstring)."""

    model: dict
    depth: int
    position_prob: list[list[float]]
    popularity: list[list[float]]
    follow: list[list[int]]
    follow_boost: list[float]
    source: dict = field(default_factory=dict)
    version: int = FIT_VERSION

    def moe_model(self) -> MoEModel:
        return validate_model_dict(self.model, "fit: field 'model'")

    def check(self, where: str = "fit") -> None:
        m = self.moe_model()
        L, E, k, D = m.moe_layers, m.experts_per_layer, m.top_k, self.depth
        if self.version != FIT_VERSION:
            raise InputError(f"{where}: field 'version': {self.version!r}, expected {FIT_VERSION}")
        if not (1 <= D <= E - k):
            raise InputError(f"{where}: field 'depth': {D} is outside 1..{E - k}")
        shapes = {"position_prob": (L, D), "popularity": (L, E), "follow": (L, E), "follow_boost": (L,)}
        for name, shape in shapes.items():
            arr = np.asarray(getattr(self, name), dtype=float)
            if arr.shape != shape or not np.isfinite(arr).all() or (arr < 0).any():
                raise InputError(f"{where}: field '{name}': shape {arr.shape} or values do not fit {shape}, finite, ≥ 0")
        pos = np.asarray(self.position_prob)
        if (pos > 1 + 1e-9).any() or (pos.sum(axis=1) > k + 1e-6).any():
            raise InputError(f"{where}: field 'position_prob': a probability above 1 or a layer sum above top_k={k}")
        if (np.asarray(self.popularity).sum(axis=1) <= 0).any():
            raise InputError(f"{where}: field 'popularity': a layer has no positive weight")
        if (np.asarray(self.follow) >= E).any():
            raise InputError(f"{where}: field 'follow': an expert id ≥ {E}")


def save_fit(fit: RoutingFit, path: str | os.PathLike) -> None:
    """JSON with one line per key, and per layer for the per-layer tables (readable diffs)."""
    lines = []
    for key, value in sorted(asdict(fit).items()):
        if isinstance(value, list) and value and isinstance(value[0], list):
            rows = ",\n  ".join(json.dumps(row) for row in value)
            lines.append(f"{json.dumps(key)}: [\n  {rows}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}")
    Path(path).write_text("{\n " + ",\n ".join(lines) + "\n}\n")


def load_fit(path: str | os.PathLike) -> RoutingFit:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        fit = RoutingFit(**doc)
    except OSError as err:
        raise InputError(f"{path}: read: {err.strerror or err}") from None
    except (json.JSONDecodeError, TypeError) as err:
        raise InputError(f"{path}: not a routing fit ({str(err).splitlines()[0]})") from None
    fit.check(str(path))
    return fit


def fit_digest(fit: RoutingFit) -> str:
    return hashlib.sha256(json.dumps(asdict(fit), sort_keys=True).encode()).hexdigest()[:16]


# --- estimation -------------------------------------------------------------------------------------------------

def fit_trace(path: str | os.PathLike, *, seed: int = 0, calibration_tokens: int | None = None) -> RoutingFit:
    """Estimate the parameters from the trace at `path` (two calibration runs of `calibration_tokens` tokens,
    default CALIBRATION_TOKENS)."""
    calibration_tokens = calibration_tokens or CALIBRATION_TOKENS
    grid = load_grid(path)
    if not (grid.experts >= 0).any():
        raise InputError(f"{path}: rows: no accesses to fit")
    model = grid.model
    L, E, k = model.moe_layers, model.experts_per_layer, model.top_k
    if E - k < 1:
        raise InputError(f"{path}: model: {model.name} routes all of its {E} experts (top_k={k}); nothing to fit")
    D = min(FIT_DEPTH_RHO * k, E - k)
    distance = _layer_distances(grid)  # [tokens, L, k], -1 first use, -2 no access
    valid = distance > -2
    positions = np.zeros((L, D))
    for layer in range(L):
        d = distance[:, layer][valid[:, layer]]
        positions[layer] = k * np.bincount(d[(d >= 0) & (d < D)], minlength=D)[:D] / max(d.size, 1)
    counts = stats.popularity(grid).astype(float)
    share = (counts + 0.5) / (counts + 0.5).sum(axis=1, keepdims=True)  # every expert keeps a little weight
    co = stats.coactivation(grid)
    follow = np.zeros((L, E), dtype=np.int64)
    follow[0] = np.arange(E)
    for layer in range(1, L):
        row = co[layer - 1].astype(float) + share[layer][None, :] * 1e-6  # unseen a: the most popular
        follow[layer] = row.argmax(axis=1)
    real_follow = _follow_share(grid, distance, follow, D)

    fit = RoutingFit(model=model.to_dict(), depth=D, position_prob=_round(positions), popularity=_round(share),
                     follow=follow.tolist(), follow_boost=[0.0] * L)
    # Two calibration runs. The first corrects the deep weights towards the real access shares and gives the
    # unboosted rate P at which deep choices follow the map; the boost then comes from the single-draw model
    # f = (1+β)P / (1 + βP). The second run measures the f that boost gives and solves the same model for an
    # effective P, once more.
    trial = _grid_of(fit, calibration_tokens, seed)
    trial_counts = stats.popularity(trial).astype(float) + 0.5
    weights = share * share / (trial_counts / trial_counts.sum(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    base = _follow_share(trial, _layer_distances(trial), follow, D)
    boost = _solve_boost(real_follow, base, np.zeros(L))
    fit = replace(fit, popularity=_round(weights), follow_boost=_round(boost))
    trial = _grid_of(fit, calibration_tokens, seed + 1)
    reached = _follow_share(trial, _layer_distances(trial), follow, D)
    with np.errstate(divide="ignore", invalid="ignore"):
        effective = reached / ((1 + boost) - boost * reached)
    boost = _solve_boost(real_follow, effective, boost)
    source = {"file": Path(path).name, "sequences": grid.sequences, "tokens": int(len(grid.experts)),
              "accesses": int(valid.sum()), "moe_layer_ids": list(grid.meta.moe_layer_ids),
              "provenance": {k_: v for k_, v in grid.meta.provenance.items() if not isinstance(v, (list, dict))},
              "lru_hit_rate_per_layer": {f"rho{r}": _round(positions[:, : min(r * k, D)].sum(axis=1) / k)
                                         for r in (1, 2, 4) if r * k <= D},
              "deep_follow_share_per_layer": _round(np.nan_to_num(real_follow))}
    fit = replace(fit, follow_boost=_round(boost), source=source)
    fit.check()
    return fit


def _solve_boost(target: np.ndarray, rate: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """β with (1+β)·rate / (1 + β·rate) = target per layer; 0 where the target is not above the rate; layer 0 has none."""
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = (target - rate) / (rate * (1 - target))
    ok = np.isfinite(beta) & (rate > 0) & (target < 1)
    beta = np.clip(np.where(ok, beta, fallback), 0.0, 1e3)
    beta[0] = 0.0
    return beta


def _layer_distances(grid: RoutingGrid) -> np.ndarray:
    """Persisting per-layer LRU stack distance of every (token, layer, slot): ≥ 0, -1 first use, -2 no access."""
    streams = cache.layer_streams(grid, persist=True)
    d = cache.lru_distances(streams)  # packed: block t = token t of every layer (order = layers 0..L-1)
    L, k = grid.model.moe_layers, grid.model.top_k
    out = np.empty((len(grid.experts), L, k), dtype=np.int32)
    out[:, streams.order] = d.reshape(len(grid.experts), L, k)
    return np.where(grid.experts >= 0, out, -2)


def _follow_share(grid: RoutingGrid, distance: np.ndarray, follow: np.ndarray, depth: int) -> np.ndarray:
    """Per layer, the share of deep accesses (distance ≥ depth or first use) that the follow map predicts from the
    same token's experts one layer below."""
    L = grid.model.moe_layers
    out = np.full(L, np.nan)
    for layer in range(1, L):
        below = grid.experts[:, layer - 1]
        mapped = np.where(below >= 0, follow[layer][np.maximum(below, 0)], -1)
        here = grid.experts[:, layer]
        deep = (distance[:, layer] >= depth) | (distance[:, layer] == -1)
        hit = (here[:, :, None] == mapped[:, None, :]).any(axis=2) & deep
        if deep.sum():
            out[layer] = hit.sum() / deep.sum()
    return out


def _round(a) -> list:
    return np.round(np.asarray(a, dtype=float), DIGITS).tolist()


# --- generation -------------------------------------------------------------------------------------------------

def route(fit: RoutingFit, tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Expert ids [tokens, L, k] int16 of one continuous stream per layer."""
    m = fit.moe_model()
    L, E, k, D = m.moe_layers, m.experts_per_layer, m.top_k, fit.depth
    positions = np.asarray(fit.position_prob, dtype=float)
    deep_mass = np.maximum(k - positions.sum(axis=1), 0.0)
    U = D + int(np.ceil(deep_mass.max() + 1e-9))
    units = np.zeros((L, U))
    units[:, :D] = positions
    for layer in range(L):  # the deep mass as units of at most 1
        rest, j = deep_mass[layer], D
        while rest > 1e-12:
            units[layer, j] = min(1.0, rest)
            rest -= units[layer, j]
            j += 1
    log_weight = np.log(np.asarray(fit.popularity, dtype=float) + 1e-300)
    log_boost = np.log1p(np.asarray(fit.follow_boost, dtype=float))
    follow = np.asarray(fit.follow, dtype=np.int64)
    first = np.argsort(-np.asarray(fit.popularity), axis=1, kind="stable")  # initial stacks: popular on top
    stamp = np.empty((L, E), dtype=np.int64)
    np.put_along_axis(stamp, first, -np.arange(1, E + 1)[None, :], axis=1)
    ids = np.zeros((tokens, L, k), dtype=np.int16)
    slot_rank = np.arange(k)
    for d in range(tokens + L - 1):
        layers = np.arange(max(0, d - tokens + 1), min(L, d + 1))
        t = d - layers
        n = len(layers)
        rows = np.arange(n)[:, None]
        order = np.argsort(-stamp[layers], axis=1)  # experts by recency, most recent first
        place = np.empty_like(order)
        np.put_along_axis(place, order, np.arange(E)[None, :], axis=1)

        # systematic sampling: exactly k units, unit i with probability units[i]
        perm = np.argsort(rng.random((n, U)), axis=1)
        cum = np.cumsum(np.take_along_axis(units[layers], perm, axis=1), axis=1)
        cum *= k / cum[:, -1:]
        u = rng.random((n, 1))
        taken = (np.floor(cum - u) - np.floor(np.concatenate((np.zeros((n, 1)), cum[:, :-1]), axis=1) - u)) > 0
        chosen_unit = np.zeros((n, U), dtype=bool)
        np.put_along_axis(chosen_unit, perm, taken, axis=1)
        shallow = chosen_unit[:, :D]
        n_shallow = shallow.sum(axis=1)
        pos = np.sort(np.where(shallow, np.arange(D), E - 1), axis=1)
        if D < k:
            pos = np.concatenate((pos, np.full((n, k - D), E - 1)), axis=1)
        pos = pos[:, :k]
        shallow_experts = order[rows, pos]

        # deep choices: weighted, without replacement (Gumbel top-k), among experts at stack positions ≥ D
        score = log_weight[layers] + rng.gumbel(size=(n, E))
        above = layers > 0
        if above.any():
            mapped = follow[layers[above]][np.arange(above.sum())[:, None], ids[t[above], layers[above] - 1]]
            boost = np.zeros((above.sum(), E))
            boost[np.arange(above.sum())[:, None], mapped] = log_boost[layers[above]][:, None]
            score[above] += boost
        score[place < D] = -np.inf
        deep_experts = np.argsort(-score, axis=1, kind="stable")[:, :k]

        use_shallow = slot_rank[None, :] < n_shallow[:, None]
        merged = np.concatenate((shallow_experts, deep_experts), axis=1)
        keep = np.concatenate((use_shallow, slot_rank[None, :] < (k - n_shallow)[:, None]), axis=1)
        picked = np.take_along_axis(merged, np.argsort(~keep, axis=1, kind="stable")[:, :k], axis=1)
        picked = np.take_along_axis(picked, np.argsort(rng.random((n, k)), axis=1), axis=1)  # router slots
        ids[t, layers] = picked
        stamp[layers[:, None], picked] = t[:, None] * k + slot_rank[None, :] + 1
    return ids


def _grid_of(fit: RoutingFit, tokens: int, seed: int) -> RoutingGrid:
    ids = route(fit, tokens, np.random.default_rng([seed, 7]))
    meta = TraceMeta(fit.moe_model(), list(range(fit.moe_model().moe_layers)), {})
    return RoutingGrid(ids, np.array([0, tokens], dtype=np.int64), meta)


def write_fitted(path: str | os.PathLike, fit: RoutingFit, *, sequences: int, tokens_per_sequence: int, seed: int = 0,
                 vocab_size: int = 32000, fit_file: str | None = None) -> int:
    """Write a fitted synthetic trace atomically (gate weights and token ids as in traces/synth.py); returns rows."""
    for name, value, lo in (("sequences", sequences, 1), ("tokens_per_sequence", tokens_per_sequence, 1),
                            ("seed", seed, 0), ("vocab_size", vocab_size, 1)):
        if value < lo:
            raise InputError(f"synth: field '{name}': {value!r} is below {lo}")
    fit.check()
    model = fit.moe_model()
    L, k = model.moe_layers, model.top_k
    T = sequences * tokens_per_sequence
    rng = np.random.default_rng([seed, 1])
    experts = route(fit, T, rng).reshape(-1, k)
    rows = len(experts)
    logits = rng.standard_normal((rows, k))
    gates = np.exp(logits - logits.max(axis=1, keepdims=True))
    gates = _bfloat16(-np.sort(-gates / gates.sum(axis=1, keepdims=True), axis=1))
    token_id = np.repeat(np.minimum(vocab_size ** rng.random(T), vocab_size).astype(np.int32) - 1, L)
    sequence = np.repeat(np.arange(sequences, dtype=np.int32), tokens_per_sequence * L)
    token = np.tile(np.repeat(np.arange(tokens_per_sequence, dtype=np.int32), L), sequences)
    layer = np.tile(np.arange(L, dtype=np.int16), T)
    meta = TraceMeta(model=model, moe_layer_ids=list(fit.source.get("moe_layer_ids") or range(L)), provenance={
        "source_format": "synthetic-fitted", "generator": __name__, "generator_version": GENERATOR_VERSION,
        "sequences": sequences, "tokens_per_sequence": tokens_per_sequence, "seed": seed, "vocab_size": vocab_size,
        "fit_file": fit_file, "fit_sha256_16": fit_digest(fit), "fitted_to": fit.source.get("file"),
    })
    with TraceWriter(path, meta, weights=True, token_id=True) as writer:
        for lo in range(0, rows, CHUNK_ROWS):
            part = slice(lo, lo + CHUNK_ROWS)
            writer.write(TraceChunk(sequence[part], token[part], layer[part], experts[part], weights=gates[part],
                                    token_id=token_id[part]))
    return writer.rows
