"""Replays a recorded predictor: the trace's `pred_<column>` holds a predictor's experts for each (token, layer).

Examples: MoE-Beyond's learned predictor (imported from its predicted CSVs as `moe_beyond`) or a pre-gate
speculative prediction (`speculative`, written by `moe-trace record`). The predictions of the current token are taken
as known from the token's start, as for a predictor that works from the token's embedding: at the token's start the
first `horizon` layers are requested, and after layer l's router, layers l+1..l+horizon (within the token).
"""

from simulator.errors import InputError
from simulator.prefetcher import Prefetcher, at_least_one


class RecordedPrefetcher(Prefetcher):
    name = "recorded"

    def __init__(self, model, column: str | None = None, horizon: int | None = None):
        self.column = column
        """None means: the trace's only prediction column (chosen in `bind_trace`)."""
        self.horizon = at_least_one("horizon", horizon) or model.moe_layers
        self.predictions = (column,) if column else ()

    def bind_trace(self, columns):
        if self.column is not None:
            return
        if not columns:
            raise InputError("prefetch=recorded: the trace has no prediction column (pred_<name>); record one with "
                             "`moe-trace record` (pred_speculative) or import a predictor's output (moe-trace import "
                             "--format moe-beyond with its predicted CSVs), then replay that trace")
        if len(columns) != 1:
            raise InputError(f"prefetch.column: the trace has prediction columns {list(columns)}; name one")
        self.column = columns[0]
        self.predictions = (self.column,)

    def _layers(self, view, first: int):
        predicted = view.predictions[self.column]
        return [(layer, e) for layer in range(first, first + self.horizon) for e in predicted.get(layer) or ()]

    def at_token_start(self, view):
        return self._layers(view, 0)

    def after_router(self, view):
        return self._layers(view, view.layer + 1)
