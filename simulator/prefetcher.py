"""The prefetcher interface: what a running system knows, and the experts it asks to load ahead.

The replay calls a prefetcher at two points of every token:
  - `at_token_start(view)` before layer 0 of the token runs (the router of no layer has spoken yet);
  - `after_router(view)` once layer `view.layer`'s router has chosen `view.experts`.
Each returns (layer, expert) pairs in priority order. Pairs already resident or already on their way are skipped;
the rest are queued on the host-to-device link behind every demand fetch.

The `PrefetchView` shows only the past and present: the current token's routing up to `view.layer`, the previous
token's routing, the trace's recorded predictor columns for the current token (a predictor's output, available
from the token's start), the cache and the link. `view.future()` is the one window onto routing not yet decided,
and it is open only to prefetchers that declare `oracle = True` (upper bounds); anyone else reading it gets
`FutureAccessError`, so a prefetcher that cheats by mistake fails loudly.

Optional hooks, declared on `Prefetcher` with defaults that do nothing: `fit(chunks)` learns from a training trace
(`prefetch.train_trace`) before the replay; `bind_trace(columns)` is told the replayed trace's prediction columns
and settles `predictions`, the columns the replay must load for it. The interface lives on the ground floor
(simulator/); `policies.prefetchers` re-exports it for plug-in authors.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from simulator.cache import ExpertCache
    from simulator.link import Link
    from simulator.model import MoEModel
    from simulator.trace_rows import TraceChunk


def at_least_one(name: str, value: int | None) -> int | None:
    """A count parameter of a prefetcher (`top_n`, `horizon`, ...): None (its default) or at least 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


class FutureAccessError(RuntimeError):
    """A prefetcher that is not an oracle asked for routing that has not happened yet."""


class PrefetchView:
    """What the system knows at a prefetch point. One instance is updated in place by the replay."""

    def __init__(self, model: "MoEModel", cache: "ExpertCache", link: "Link | None", oracle: bool, future):
        self.model = model
        self.cache = cache
        self.link = link
        """The host-to-device link (bandwidth, latency, queue); None in a hit-rate-only replay."""
        self.layer_compute_s: float | None = None
        """GPU time of one layer step without stalls (what a system measures of its own kernels); None untimed."""
        self._oracle = oracle
        self._future = future
        self.now_s = 0.0
        self.sequence = 0
        self.position = 0
        self.layer = -1
        """The MoE layer whose router has just spoken; -1 at token start."""
        self.experts: list[int] = []
        """The experts `layer`'s router chose (empty at token start)."""
        self.token_routing: dict[int, list[int]] = {}
        """The current token's routing so far: layer -> experts, for layers up to `layer`."""
        self.previous_routing: dict[int, list[int]] | None = None
        """The previous token's routing in this sequence (layer -> experts), or None for a sequence's first token."""
        self.predictions: dict[str, dict[int, list[int]]] = {}
        """Recorded predictor columns for the current token: name -> layer -> predicted experts."""

    def is_resident(self, layer: int, expert: int) -> bool:
        return self.cache.is_resident(layer, expert)

    def future(self, steps: int) -> list[tuple[int, list[int]]]:
        """The next `steps` layer steps' (layer, routed experts), across token boundaries. Oracles only."""
        if not self._oracle:
            raise FutureAccessError("this prefetcher is not an oracle (set oracle = True) but read future routing")
        return self._future(steps)


class Prefetcher(ABC):
    name: ClassVar[str] = ""
    oracle: ClassVar[bool] = False
    """True only for upper-bound prefetchers that read future routing through `view.future()`."""
    predictions: Sequence[str] = ()
    """Recorded prediction columns this prefetcher reads (the replay loads them from the trace); final after
    `bind_trace`."""

    def fit(self, chunks: Iterable["TraceChunk"]) -> None:
        """Learn from a training trace's rows before the replay (`prefetch.train_trace`); by default learn nothing."""

    def bind_trace(self, columns: Sequence[str]) -> None:
        """Called once before the replay with the trace's prediction columns; a prefetcher that may choose among
        them overrides this and sets `predictions` (by default they stay as they are, and the trace reader refuses
        a column the trace lacks)."""

    def start_sequence(self) -> None:
        """A new sequence begins: forget per-sequence state (knowledge learned across sequences may stay)."""

    def at_token_start(self, view: PrefetchView) -> Sequence[tuple[int, int]]:
        return ()

    def after_router(self, view: PrefetchView) -> Sequence[tuple[int, int]]:
        return ()
