"""Train an expert predictor on trace files and score predictions of expert activation, in MoE-Beyond's terms.

Scoring (MoE-Beyond, transformer_model/transformer_train.py `validate()`, read at commit 4dca2ea): each
(token, layer) predicts a 0/1 vector over the E experts, its top-k (k = the model's top_k, 6); the vectors of all
rows are flattened and scored with scikit-learn. So:
  - precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2PR / (P + R): of the routed experts (the 1s), pooled
    over every (token, layer) of the layer (micro); with k predicted and k routed, the three are equal;
  - accuracy = (TP + TN) / (rows · E): every per-expert decision counts, the 58 of 64 experts rightly left out
    too; that is why 4.5 of 6 right scores 95%;
  - macro F1 = (F1 of the 1s + F1 of the 0s) / 2, scikit-learn's `f1_score(average='macro')` on the flattened
    vectors: the "F1" MoE-Beyond reports (86.6%). Its recorded test predictions give 0.8655 by this code.
Only recorded rows count (MoE-Beyond's flattened arrays also held its batches' zero padding, as true negatives).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.atomic_file import atomic_write_bytes
from simulator.errors import InputError
from simulator.expert_predictor import ExpertPredictor, Features, Routing, RoutingInputs, Training, train
from simulator.model import MoEModel
from simulator.trace_rows import TraceChunk
from traces.format import TraceFile

METRICS = ("precision", "recall", "f1", "accuracy", "macro_f1")


@dataclass
class Scores:
    """Per-expert decision counts per MoE layer: true/false positives/negatives."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @classmethod
    def empty(cls, layers: int) -> "Scores":
        return cls(*(np.zeros(layers, dtype=np.int64) for _ in range(4)))

    def add(self, layer: int, true: np.ndarray, predicted: np.ndarray) -> None:
        """Count [rows, E] boolean routed and predicted vectors of one layer."""
        tp = int((true & predicted).sum())
        self.tp[layer] += tp
        self.fp[layer] += int(predicted.sum()) - tp
        self.fn[layer] += int(true.sum()) - tp
        self.tn[layer] += int((~true & ~predicted).sum())

    @staticmethod
    def _metrics(tp, fp, fn, tn) -> dict[str, float]:
        def ratio(a, b):
            return float(a / b) if b else 0.0
        f1 = ratio(2 * tp, 2 * tp + fp + fn)
        f1_negative = ratio(2 * tn, 2 * tn + fp + fn)
        return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": f1,
                "accuracy": ratio(tp + tn, tp + fp + fn + tn), "macro_f1": (f1 + f1_negative) / 2}

    def per_layer(self) -> list[dict[str, float]]:
        return [self._metrics(*(int(a[l]) for a in (self.tp, self.fp, self.fn, self.tn))) for l in range(len(self.tp))]

    def overall(self) -> dict[str, float]:
        return self._metrics(*(int(a.sum()) for a in (self.tp, self.fp, self.fn, self.tn)))

    def to_dict(self) -> dict:
        return {"all": self.overall(), "per_layer": self.per_layer()}


def _offset_chunks(paths: Sequence[str | Path], model: MoEModel | None) -> tuple[MoEModel, Iterator[TraceChunk], list[str]]:
    """Chunks of every file, sequence ids shifted so that no two files' sequences merge; all files of one shape."""
    files = [TraceFile(p) for p in paths]
    model = model or files[0].meta.model
    for f in files:
        for field in ("moe_layers", "experts_per_layer", "top_k"):
            if getattr(f.meta.model, field) != getattr(model, field):
                raise InputError(f"{f.path}: field '{field}': {getattr(f.meta.model, field)} differs from "
                                 f"{getattr(model, field)} of {files[0].path} (train on traces of one model)")

    def chunks() -> Iterator[TraceChunk]:
        offset = 0
        for f in files:
            top = -1
            for chunk in f.chunks():
                top = max(top, int(chunk.sequence.max()) if len(chunk) else -1)
                yield dataclasses.replace(chunk, sequence=chunk.sequence.astype(np.int64) + offset)
            offset += top + 1

    return model, chunks(), [f.path.name for f in files]


def train_files(paths: Sequence[str | Path], out: str | Path, *, horizon: int, features: Features,
                training: Training, progress=None) -> ExpertPredictor:
    """Train on trace files (our Parquet format) and write the predictor file atomically."""
    model, chunks, names = _offset_chunks(paths, None)
    routing = Routing.from_chunks(chunks, model)
    predictor = train(routing, model, horizon=horizon, features=features,
                      training=dataclasses.replace(training, traces=tuple(names)), progress=progress)
    predictor.save(out)
    return predictor


def evaluate_predictor(predictor: ExpertPredictor, trace: str | Path, *, ahead: int = 1, top_n: int | None = None) -> Scores:
    """Score the predictor on a trace: each layer t by its top-n (default top_k) predicted at decision point
    t - ahead + 1 (ahead 1: after layer t-1's router, or at the token's start for layer 0)."""
    if not 1 <= ahead <= predictor.horizon:
        raise InputError(f"ahead: {ahead} is outside 1..{predictor.horizon} (the predictor's horizon)")
    test = TraceFile(trace)
    predictor.check_fits(test.meta.model)
    routing = Routing.from_chunks(test.chunks(), test.meta.model)
    inputs = RoutingInputs(routing, predictor.features, predictor.horizon)
    k = top_n or predictor.top_k
    scores = Scores.empty(predictor.moe_layers)
    for t in range(ahead - 1, predictor.moe_layers):
        d = t - ahead + 1
        logits = predictor.logits(d, inputs.at(d))[:, ahead - 1]
        predicted = np.zeros(logits.shape, dtype=bool)
        np.put_along_axis(predicted, np.argpartition(-logits, k - 1, axis=1)[:, :k], True, axis=1)
        rows = routing.present[:, t]
        scores.add(t, routing.hot[rows, t].astype(bool), predicted[rows])
    return scores


def evaluate_recorded(trace: str | Path, column: str) -> Scores:
    """Score a trace's recorded prediction column (`pred_<column>`, e.g. MoE-Beyond's `moe_beyond`) the same way."""
    test = TraceFile(trace)
    model = test.meta.model
    scores = Scores.empty(model.moe_layers)
    for chunk in test.chunks(predictions=[column]):
        n, experts = len(chunk), model.experts_per_layer
        true = np.zeros((n, experts), dtype=bool)
        rows, slots = np.nonzero(chunk.experts >= 0)
        true[rows, chunk.experts[rows, slots]] = True
        predicted = np.zeros((n, experts), dtype=bool)
        for i, ids in enumerate(chunk.predictions[column]):
            predicted[i, [e for e in ids or () if 0 <= e < experts]] = True
        for layer in np.unique(chunk.layer):
            here = chunk.layer == layer
            scores.add(int(layer), true[here], predicted[here])
    return scores


def format_scores(scores: Scores, title: str) -> str:
    lines = [title, f"{'layer':>6}" + "".join(f"{m:>11}" for m in METRICS)]
    for layer, row in enumerate(scores.per_layer()):
        lines.append(f"{layer:>6}" + "".join(f"{row[m]:>11.4f}" for m in METRICS))
    overall = scores.overall()
    lines.append(f"{'all':>6}" + "".join(f"{overall[m]:>11.4f}" for m in METRICS))
    return "\n".join(lines)


def write_scores(path: str | Path, doc: dict) -> None:
    atomic_write_bytes(path, (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode())
