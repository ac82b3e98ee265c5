"""Synthetic routing traces with tunable locality, for tests, demos and sweeps where no real trace fits.

Three knobs shape the routing, each one a kind of locality that cache and prefetch policies exploit:
  skew         per-layer popularity: expert of rank r (in a per-layer random order) is drawn with weight
               1/(r+1)^skew; 0 is uniform.
  reuse        temporal reuse: each of a token's k slots repeats, with this probability, the expert the previous
               token of the sequence chose in the same slot at the same layer.
  cross_layer  cross-layer correlation: a slot that is not reused follows, with this probability, a fixed per-layer
               random map (a permutation) from the expert in the same slot one layer below.
Whatever neither rule decides is drawn from the layer's popularity. A slot that would repeat an expert already in
its row is redrawn from the popularity of the experts not yet chosen, so the k experts of a row are distinct.
Gate weights are a softmax over k standard-normal logits, sorted descending, so slot order is router order
(renormalised top-k, as Mixtral reports them), rounded to bfloat16 precision as bf16 routers return them (which
also lets them compress). Token ids are log-uniform over the vocabulary (Zipf-like: small ids
frequent); they do not influence routing.

Output is a pure function of the arguments: the same arguments give byte-identical trace files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.format import TraceChunk, TraceMeta, TraceWriter

GENERATOR_VERSION = 1
BATCH_ROWS = 1 << 20
"""Rows generated at once: the token loop is vectorised over the sequences of a batch, so larger is faster."""
CHUNK_ROWS = 1 << 16
"""Rows per yielded chunk (one Parquet row group each)."""


@dataclass(frozen=True)
class SynthParams:
    """Everything that determines a synthetic trace besides the model; recorded in its provenance."""

    sequences: int = 4
    tokens_per_sequence: int = 256
    seed: int = 0
    skew: float = 0.8
    reuse: float = 0.15
    cross_layer: float = 0.3
    vocab_size: int = 32000

    def check(self) -> None:
        """Raise InputError naming the first parameter out of range."""
        limits = {
            "sequences": (1, None),
            "tokens_per_sequence": (1, None),
            "seed": (0, None),
            "skew": (0.0, 10.0),
            "reuse": (0.0, 1.0),
            "cross_layer": (0.0, 1.0),
            "vocab_size": (1, 2**31 - 1),
        }
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not (lo <= value and (hi is None or value <= hi)):
                raise InputError(f"synth: field '{name}': {value!r} is outside {lo}..{'' if hi is None else hi}")


def synthesize(model: MoEModel, params: SynthParams) -> Iterator[TraceChunk]:
    """Trace rows in (sequence, token, layer) order, with gate weights and token ids."""
    params.check()
    L, E, k, T = model.moe_layers, model.experts_per_layer, model.top_k, params.tokens_per_sequence
    shape_rng = np.random.default_rng([params.seed, 0])
    popularity = np.empty((L, E))
    weight = 1.0 / np.arange(1, E + 1) ** params.skew
    for layer in range(L):
        popularity[layer, shape_rng.permutation(E)] = weight / weight.sum()
    follow = np.stack([shape_rng.permutation(E) for _ in range(L)])

    per_batch = max(1, BATCH_ROWS // (T * L))
    for batch, first in enumerate(range(0, params.sequences, per_batch)):
        n = min(per_batch, params.sequences - first)
        rng = np.random.default_rng([params.seed, 1, batch])
        experts = _route(rng, n, T, popularity, follow, k, params.reuse, params.cross_layer).reshape(-1, k)
        rows = len(experts)
        logits = rng.standard_normal((rows, k))
        gates = np.exp(logits - logits.max(axis=1, keepdims=True))
        gates = _bfloat16(-np.sort(-gates / gates.sum(axis=1, keepdims=True), axis=1))
        token_id = np.minimum(params.vocab_size ** rng.random(n * T), params.vocab_size).astype(np.int32) - 1
        sequence = np.repeat(np.arange(first, first + n, dtype=np.int32), T * L)
        token = np.tile(np.repeat(np.arange(T, dtype=np.int32), L), n)
        layer = np.tile(np.arange(L, dtype=np.int16), n * T)
        token_id = np.repeat(token_id, L)
        for lo in range(0, rows, CHUNK_ROWS):
            part = slice(lo, lo + CHUNK_ROWS)
            yield TraceChunk(sequence[part], token[part], layer[part], experts[part],
                             weights=gates[part], token_id=token_id[part])


def write_synthetic(path: str | Path, model: MoEModel, params: SynthParams) -> int:
    """Write a synthetic trace atomically; returns the number of rows."""
    meta = TraceMeta(
        model=model,
        moe_layer_ids=list(range(model.moe_layers)),
        provenance={"source_format": "synthetic", "generator": __name__, "generator_version": GENERATOR_VERSION, **asdict(params)},
    )
    with TraceWriter(path, meta, weights=True, token_id=True) as writer:
        for chunk in synthesize(model, params):
            writer.write(chunk)
    return writer.rows


_FRESH, _REUSE, _CROSS = 0, 1, 2


def _bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (8 significant bits); rounding keeps their order."""
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(np.float32)


def _route(rng: np.random.Generator, n: int, T: int, popularity: np.ndarray, follow: np.ndarray, k: int,
           reuse: float, cross_layer: float) -> np.ndarray:
    """Expert ids [n sequences, T tokens, L layers, k slots].

    Cell (t, l) depends on (t-1, l) through reuse and on (t, l-1) through the cross-layer map, so cells on one
    anti-diagonal t + l = d are independent: the loop runs over the T + L - 1 diagonals, vectorised over the
    sequences and the cells of a diagonal.
    """
    L, E = popularity.shape
    u = rng.random((n, T, L, k))
    source = np.full(u.shape, _FRESH, dtype=np.int8)
    source[u < reuse + (1 - reuse) * cross_layer] = _CROSS
    source[u < reuse] = _REUSE
    cdf = np.cumsum(popularity, axis=1)
    fresh = np.empty((n, T, L, k), dtype=np.int16)
    draws = rng.random((n, T, L, k))
    for layer in range(L):
        fresh[:, :, layer] = np.minimum(np.searchsorted(cdf[layer], draws[:, :, layer], side="right"), E - 1)

    ids = np.zeros((n, T, L, k), dtype=np.int16)  # zeros, not garbage: masked-out lookups below still index `follow`
    for d in range(T + L - 1):
        layers = np.arange(max(0, d - T + 1), min(L, d + 1))
        tokens = d - layers
        src = source[:, tokens, layers]
        reused = (src == _REUSE) & (tokens > 0)[None, :, None]
        crossed = (src == _CROSS) & (layers > 0)[None, :, None]
        previous = ids[:, tokens - 1, layers]
        below = follow[(layers - 1)[None, :, None], ids[:, tokens, layers - 1]]
        pick = np.where(reused, previous, np.where(crossed, below, fresh[:, tokens, layers]))
        row_layer = np.broadcast_to(layers, (n, len(layers))).ravel()
        ids[:, tokens, layers] = _distinct(rng, pick.reshape(-1, k), reused.reshape(-1, k), row_layer, popularity).reshape(pick.shape)
    return ids


def _distinct(rng: np.random.Generator, pick: np.ndarray, kept: np.ndarray, row_layer: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Make each row's ids distinct: reused slots stay (they are distinct already, copied from one row); any other
    slot that repeats an id earlier in the scan is redrawn from its layer's popularity over the ids not yet taken."""
    rows, k = pick.shape
    E = popularity.shape[1]
    out = pick.copy()
    taken = np.zeros((rows, E), dtype=bool)
    r, j = np.nonzero(kept)
    taken[r, out[r, j]] = True
    everyone = np.arange(rows)
    for j in range(k):
        free = ~kept[:, j]
        clash = np.flatnonzero(free & taken[everyone, out[:, j]])
        if clash.size:
            weights = popularity[row_layer[clash]] * ~taken[clash]
            cum = np.cumsum(weights, axis=1)
            target = rng.random(clash.size) * cum[:, -1]
            out[clash, j] = np.minimum((cum <= target[:, None]).sum(axis=1), E - 1)
        taken[everyone[free], out[free, j]] = True
    return out
