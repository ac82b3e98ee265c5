"""A learned expert-activation predictor: from what is known at a layer's router, the experts of the next layers.

MoE-Beyond (github.com/ngavhane/moe-beyond) trains a transformer on traces to predict each (token, layer)'s experts
from the token's hidden state. The shared traces record only expert ids (no hidden states, no gate weights, and the
`PrefetchView` shows none), and a prefetcher must read only the past, so ours predicts from routing alone:

    decision point d in 0..L-1: d = 0 is a token's start, d = l + 1 follows layer l's router
    targets: the experts of layers d .. d+H-1 of this token (H = `horizon`)
    inputs (multi-hot over the E experts; zero where the layer does not exist or was not recorded):
      - this token's experts at layers d-1, ..., d-C          (C = `current_layers`)
      - each of the P previous tokens' experts at the targets (P = `previous_tokens`), and with
        `previous_at_current` at layers d-1 .. d-C too (did this token start as the last one did?)
      - with `history`, the mean multi-hot of all earlier tokens of the sequence at the targets

The model is one small MLP per decision point (inputs -> `hidden` ReLU units -> H·E logits), trained with binary
cross-entropy. Why not one network over all layers, or a transformer: an expert id means something different at
every layer, so the first matrix is the layer's own, and with one MLP per layer the loss separates into L small
problems that numpy trains on two CPU cores in minutes; at replay time a prediction is two small matrix products
(microseconds), so a replay with it stays fast. Training and replay share this module's features and forward
pass, so what is evaluated is what prefetches. The defaults (C = 16, P = 2, history, 128 hidden units, 4 epochs) come
from an ablation on MoE-Beyond's test set (README): this token's earlier layers carry most of what routing tells.

File format: JSON (sorted keys) with the shape, the feature spec, the training settings and names, and every weight
as base64 of little-endian float32; no timestamps, so the same traces and seed give byte-identical files.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from simulator.atomic_file import atomic_write_bytes
from simulator.errors import InputError
from simulator.model import MoEModel
from simulator.trace_rows import TraceChunk

FORMAT = "moe-offload-sim expert predictor"
VERSION = 1
WEIGHTS = ("w1", "b1", "w2", "b2")


@dataclass(frozen=True)
class Features:
    """Which inputs the predictor reads at a decision point (module docstring)."""

    current_layers: int = 16
    previous_tokens: int = 2
    history: bool = True
    previous_at_current: bool = False

    def width(self, experts: int, horizon: int) -> int:
        previous = self.previous_tokens * (horizon + self.current_layers * self.previous_at_current)
        return experts * (self.current_layers + previous + int(self.history) * horizon)


@dataclass(frozen=True)
class Training:
    """How a predictor was trained: recorded in its file, and enough to train it again."""

    hidden: int = 128
    epochs: int = 4
    batch_size: int = 1024
    learning_rate: float = 2e-3
    seed: int = 0
    traces: tuple[str, ...] = ()
    """The training traces' file names (provenance)."""


Layer = Callable[[int], np.ndarray]
"""layer -> [n, E] float32 multi-hot (or mean) rows of n tokens at that layer."""


def decision_inputs(d: int, features: Features, horizon: int, layers: int, experts: int, n: int,
                    current: Layer, previous: Callable[[int, int], np.ndarray], history: Layer | None) -> np.ndarray:
    """The [n, F] inputs at decision point d: `current(l)` is this token's layer l (asked only for l < d),
    `previous(p, l)` the p-th previous token's (p = 0 the one before), `history(l)` the sequence's mean so far."""
    zero = np.zeros((n, experts), dtype=np.float32)
    parts = [current(d - c) if d - c >= 0 else zero for c in range(1, features.current_layers + 1)]
    targets = range(d, d + horizon)
    below = range(d - 1, d - 1 - features.current_layers, -1) if features.previous_at_current else ()
    for p in range(features.previous_tokens):
        parts += [previous(p, t) if t >= 0 else zero for t in below]
        parts += [previous(p, t) if t < layers else zero for t in targets]
    if features.history:
        parts += [history(t) if t < layers else zero for t in targets]
    return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), dtype=np.float32)


@dataclass
class ExpertPredictor:
    """Weights per decision point: w1 [L, F, hidden], b1 [L, hidden], w2 [L, hidden, H·E], b2 [L, H·E]."""

    model_name: str
    moe_layers: int
    experts: int
    top_k: int
    horizon: int
    features: Features
    training: Training
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    source: str = field(default="", compare=False)
    """The file it was loaded from (error messages name it)."""

    def logits(self, d: int, x: np.ndarray) -> np.ndarray:
        """[n, H, E] scores of the target layers d..d+H-1 (rows past the last layer are meaningless)."""
        h = np.maximum(x @ self.w1[d] + self.b1[d], 0.0)
        return (h @ self.w2[d] + self.b2[d]).reshape(len(x), self.horizon, self.experts)

    def check_fits(self, model: MoEModel) -> None:
        """Refuse, in one line naming the file and field, a predictor trained for another routed shape."""
        for mine, theirs in (("moe_layers", "moe_layers"), ("experts", "experts_per_layer"), ("top_k", "top_k")):
            if getattr(self, mine) != getattr(model, theirs):
                raise InputError(f"{self.source or 'predictor'}: field '{mine}': {getattr(self, mine)} does not fit the "
                                 f"trace's model {model.name} ({theirs}={getattr(model, theirs)})")

    # -- file -----------------------------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT, "version": VERSION,
            "model": {"name": self.model_name, "moe_layers": self.moe_layers, "experts": self.experts, "top_k": self.top_k},
            "horizon": self.horizon, "features": asdict(self.features),
            "training": {**asdict(self.training), "traces": list(self.training.traces)},
            "weights": {name: {"shape": list(getattr(self, name).shape),
                               "data": base64.b64encode(getattr(self, name).astype("<f4").tobytes()).decode("ascii")}
                        for name in WEIGHTS},
        }
        return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> "ExpertPredictor":
        """Read and validate a predictor file; anything malformed is one `InputError` naming file, field, value."""
        where = str(path)
        try:
            doc = json.loads(Path(path).read_bytes())
        except FileNotFoundError:
            raise InputError(f"{where}: no such predictor file") from None
        except (OSError, ValueError) as err:
            raise InputError(f"{where}: not a predictor file (not JSON: {str(err).splitlines()[0]})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise InputError(f"{where}: field 'format': {doc.get('format') if isinstance(doc, dict) else doc!r:.60} "
                             f"is not {FORMAT!r} (write one with moe-trace train-predictor)")
        if doc.get("version") != VERSION:
            raise InputError(f"{where}: field 'version': {doc.get('version')!r} is not {VERSION}")
        model = _get(doc, "model", dict, where)
        layers, experts, top_k = (_count(model, k, where, "model.") for k in ("moe_layers", "experts", "top_k"))
        horizon = _count(doc, "horizon", where)
        spec = _get(doc, "features", dict, where)
        try:
            features = Features(**spec)
            training = Training(**{**_get(doc, "training", dict, where),
                                   "traces": tuple(_get(doc, "training", dict, where).get("traces", ()))})
        except TypeError as err:
            raise InputError(f"{where}: field 'features' or 'training': {err}") from None
        for name in ("current_layers", "previous_tokens"):
            value = getattr(features, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{where}: field 'features.{name}': {value!r} is not a whole number >= 0")
        for name in ("history", "previous_at_current"):
            if not isinstance(getattr(features, name), bool):
                raise InputError(f"{where}: field 'features.{name}': {getattr(features, name)!r} is not true or false")
        hidden = training.hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise InputError(f"{where}: field 'training.hidden': {hidden!r} is not a whole number >= 1")
        width = features.width(experts, horizon)
        expected = {"w1": (layers, width, hidden), "b1": (layers, hidden), "w2": (layers, hidden, horizon * experts),
                    "b2": (layers, horizon * experts)}
        weights = _get(doc, "weights", dict, where)
        arrays = {name: _array(weights, name, shape, where) for name, shape in expected.items()}
        return cls(str(model.get("name", "")), layers, experts, top_k, horizon, features, training, source=where, **arrays)


def _get(doc: dict, key: str, kind: type, where: str, prefix: str = ""):
    value = doc.get(key)
    if not isinstance(value, kind):
        raise InputError(f"{where}: field '{prefix}{key}': {value!r:.60} is {'missing' if value is None else 'malformed'}")
    return value


def _count(doc: dict, key: str, where: str, prefix: str = "") -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{where}: field '{prefix}{key}': {value!r:.60} is not a whole number >= 1")
    return value


def _array(weights: dict, name: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    entry = _get(weights, name, dict, where, "weights.")
    if entry.get("shape") != list(shape):
        raise InputError(f"{where}: field 'weights.{name}.shape': {entry.get('shape')!r} does not fit the file's "
                         f"shape and features (expected {list(shape)})")
    try:
        raw = base64.b64decode(entry.get("data", ""), validate=True)
    except (ValueError, TypeError):
        raise InputError(f"{where}: field 'weights.{name}.data': not base64") from None
    if len(raw) != 4 * math.prod(shape):
        raise InputError(f"{where}: field 'weights.{name}.data': {len(raw)} bytes, expected {4 * math.prod(shape)} "
                         f"for float32 {list(shape)}")
    array = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{where}: field 'weights.{name}.data': holds a value that is not finite")
    return array


# -- routing as arrays, the inputs of training and evaluation ---------------------------------------------------

@dataclass
class Routing:
    """Every token of a trace: multi-hot experts [N, L, E] (uint8; layers not recorded stay zero), which layers were
    recorded [N, L], and each token's predecessor in its sequence (-1 at a sequence's start)."""

    hot: np.ndarray
    present: np.ndarray
    previous: np.ndarray

    @classmethod
    def from_chunks(cls, chunks: Iterable[TraceChunk], model: MoEModel) -> "Routing":
        parts = [(c.sequence, c.token, c.layer, c.experts) for c in chunks]
        if not parts:
            return cls(np.zeros((0, model.moe_layers, model.experts_per_layer), np.uint8),
                       np.zeros((0, model.moe_layers), bool), np.zeros(0, np.int64))
        sequence, token, layer, experts = (np.concatenate(p) for p in zip(*parts))
        new = np.ones(len(layer), dtype=bool)
        new[1:] = (sequence[1:] != sequence[:-1]) | (token[1:] != token[:-1])
        index = np.cumsum(new) - 1
        n = int(index[-1]) + 1 if len(index) else 0
        hot = np.zeros((n, model.moe_layers, model.experts_per_layer), dtype=np.uint8)
        present = np.zeros((n, model.moe_layers), dtype=bool)
        present[index, layer] = True
        rows, slots = np.nonzero(experts >= 0)
        hot[index[rows], layer[rows], experts[rows, slots]] = 1
        first_rows = np.flatnonzero(new)
        starts = np.ones(n, dtype=bool)
        starts[1:] = sequence[first_rows[1:]] != sequence[first_rows[:-1]]
        previous = np.arange(n, dtype=np.int64) - 1
        previous[starts] = -1
        return cls(hot, present, previous)

    def __len__(self) -> int:
        return len(self.hot)


class RoutingInputs:
    """The inputs of every token of a `Routing` at any decision point (for training and evaluation)."""

    def __init__(self, routing: Routing, features: Features, horizon: int):
        self.routing, self.features, self.horizon = routing, features, horizon
        self.back = [routing.previous]  # back[p]: the (p+1)-th previous token, -1 where there is none
        for _ in range(1, features.previous_tokens):
            last = self.back[-1]
            self.back.append(np.where(last >= 0, routing.previous[np.maximum(last, 0)], -1))
        position = np.arange(len(routing))
        self.first = np.maximum.accumulate(np.where(routing.previous < 0, position, 0))  # the sequence's first token
        self.earlier = (position - self.first).astype(np.float64)

    def _layer(self, l: int) -> np.ndarray:
        return self.routing.hot[:, l].astype(np.float32)

    def _previous(self, p: int, l: int) -> np.ndarray:
        back = self.back[p]
        rows = self.routing.hot[np.maximum(back, 0), l].astype(np.float32)
        rows[back < 0] = 0.0
        return rows

    def _history(self, l: int) -> np.ndarray:
        hot = self.routing.hot[:, l].astype(np.float64)
        before = np.cumsum(hot, axis=0) - hot  # sum over all earlier tokens of the trace
        sums = before - before[self.first]
        return (sums / np.maximum(self.earlier, 1.0)[:, None]).astype(np.float32)

    def at(self, d: int) -> np.ndarray:
        r = self.routing
        return decision_inputs(d, self.features, self.horizon, r.hot.shape[1], r.hot.shape[2], len(r),
                               self._layer, self._previous, self._history if self.features.history else None)

    def targets(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """[N, H·E] multi-hot of the target layers d..d+H-1 and the mask of entries that exist and were recorded."""
        r = self.routing
        n, layers, experts = r.hot.shape
        y = np.zeros((n, self.horizon, experts), dtype=np.float32)
        mask = np.zeros((n, self.horizon, experts), dtype=np.float32)
        for j, t in enumerate(range(d, min(d + self.horizon, layers))):
            y[:, j] = r.hot[:, t]
            mask[:, j] = r.present[:, t, None]
        return y.reshape(n, -1), mask.reshape(n, -1)


# -- training ---------------------------------------------------------------------------------------------------

def train(routing: Routing, model: MoEModel, *, horizon: int = 1, features: Features = Features(),
          training: Training = Training(), progress: Callable[[str], None] | None = None) -> ExpertPredictor:
    """Fit one MLP per decision point with Adam on masked binary cross-entropy. Deterministic for a seed: numpy's
    PCG64 draws the initial weights and the batch order, and nothing else is random."""
    for name, value in (("horizon", horizon), ("hidden", training.hidden), ("epochs", training.epochs),
                        ("batch_size", training.batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name}: {value!r} is not a whole number >= 1")
    if not training.learning_rate > 0:
        raise InputError(f"learning_rate: {training.learning_rate!r} is not > 0")
    if len(routing) == 0:
        raise InputError("training traces: no tokens to learn from")
    layers, experts, hidden = model.moe_layers, model.experts_per_layer, training.hidden
    width, out = features.width(experts, horizon), horizon * experts
    rng = np.random.default_rng(training.seed)
    prior = math.log(model.top_k / max(experts - model.top_k, 1))  # start at the base rate of a routed expert
    w1 = (rng.standard_normal((layers, width, hidden)) * math.sqrt(2.0 / max(width, 1))).astype(np.float32)
    w2 = (rng.standard_normal((layers, hidden, out)) * math.sqrt(1.0 / hidden)).astype(np.float32)
    b1 = np.zeros((layers, hidden), np.float32)
    b2 = np.full((layers, out), prior, np.float32)
    inputs = RoutingInputs(routing, features, horizon)
    for d in range(layers):
        x, (y, mask) = inputs.at(d), inputs.targets(d)
        params = [w1[d], b1[d], w2[d], b2[d]]
        loss = _fit_layer(params, x, y, mask, training, rng)
        if progress:
            progress(f"decision point {d}: loss {loss:.4f}")
    return ExpertPredictor(model.name, layers, experts, model.top_k, horizon, features, training, w1, b1, w2, b2)


def _fit_layer(params: list[np.ndarray], x, y, mask, training: Training, rng) -> float:
    """Adam (β 0.9/0.999) on one decision point's MLP, updating `params` in place; returns the last epoch's loss
    (only that epoch computes it: it is a report, not part of the gradient)."""
    first = [np.zeros_like(p) for p in params]
    second = [np.zeros_like(p) for p in params]
    step, n, lr = 0, len(x), np.float32(training.learning_rate)
    total, weight = 0.0, 0.0
    for epoch in range(training.epochs):
        order = rng.permutation(n)
        last = epoch == training.epochs - 1
        for start in range(0, n, training.batch_size):
            rows = order[start:start + training.batch_size]
            xb, yb, mb = x[rows], y[rows], mask[rows]
            count = mb.sum()
            if count == 0:
                continue
            w1, b1, w2, b2 = params
            z1 = xb @ w1 + b1
            h = np.maximum(z1, 0.0)
            z2 = h @ w2 + b2
            p = 0.5 + 0.5 * np.tanh(0.5 * z2)  # the sigmoid, without exp's overflow
            if last:
                total += float((mb * (np.maximum(z2, 0) - z2 * yb + np.log1p(np.exp(-np.abs(z2))))).sum())
                weight += float(count)
            dz2 = (p - yb) * mb / count
            dh = dz2 @ w2.T
            dz1 = dh * (z1 > 0)
            grads = [xb.T @ dz1, dz1.sum(0), h.T @ dz2, dz2.sum(0)]
            step += 1
            c1, c2 = np.float32(1 - 0.9 ** step), np.float32(1 - 0.999 ** step)
            for p_, g, m, v in zip(params, grads, first, second):
                m *= 0.9
                m += 0.1 * g
                v *= 0.999
                v += 0.001 * g * g
                p_ -= lr * (m / c1) / (np.sqrt(v / c2) + np.float32(1e-8))
    return total / max(weight, 1.0)
