"""The scheduler interface: which requests run, and which of their tokens form the next iteration.

A batched replay (simulator.serving) asks the scheduler once per iteration. It admits requests from
`state.waiting` (arrived, in arrival order) with `state.admit`, while `state.can_admit` says there is KV memory,
and returns the iteration's work: (request, tokens) pairs in row order, a decode token (1) for a request whose
prompt is done, or a chunk of its prompt. The replay then runs every MoE layer once over those rows. The
implementations live in `policies.schedulers`; the interface is on the ground floor so the engine needs no plug-in
package.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from simulator.errors import InputError
from simulator.requests import Request


@dataclass(frozen=True)
class ServeLimits:
    max_batch: int = 1
    """Requests running at once."""
    max_batched_tokens: int = 2048
    """Tokens (decode tokens and prompt chunks) in one iteration."""

    def __post_init__(self):
        if self.max_batch < 1 or self.max_batched_tokens < 1:
            raise InputError(f"serve: max_batch={self.max_batch} and max_batched_tokens={self.max_batched_tokens} "
                             "must both be at least 1")


class ServeState:
    """What a scheduler sees at an iteration's start, and the one way it changes it (`admit`)."""

    def __init__(self, limits: ServeLimits, can_admit: Callable[[Request], bool], on_admit: Callable[[Request], None]):
        self.limits = limits
        self.waiting: deque[Request] = deque()
        """Arrived, not yet admitted, in arrival order."""
        self.running: list[Request] = []
        """Admitted and unfinished, in admission order."""
        self.now_s = 0.0
        self._can_admit = can_admit
        self._on_admit = on_admit

    def can_admit(self, request: Request) -> bool:
        """A slot is free and the KV cache has room for `request`."""
        return len(self.running) < self.limits.max_batch and self._can_admit(request)

    def admit(self, request: Request) -> None:
        self.waiting.remove(request)
        self.running.append(request)
        request.admitted_s = self.now_s
        self._on_admit(request)


class Scheduler(ABC):
    name: ClassVar[str] = ""

    @abstractmethod
    def schedule(self, state: ServeState) -> list[tuple[Request, int]]:
        """Admit requests, then return the iteration's (request, tokens) pairs in row order (empty: nothing to run)."""
