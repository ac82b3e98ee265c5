"""Schedulers by name (the `scheduler` registry), and FCFS continuous batching, the default.

FCFS is iteration-level continuous batching as vLLM and SGLang run it: requests are admitted first come first
served while a slot and their KV memory are free (an admission never jumps the queue); each iteration takes one
decode token from every running request whose prompt is done, then fills the rest of the token budget with prompt
chunks of the oldest admitted requests (chunked prefill).
"""

from __future__ import annotations

from simulator.registry import Registry
from simulator.scheduler import Scheduler, ServeState


class FCFSScheduler(Scheduler):
    name = "fcfs"

    def schedule(self, state: ServeState):
        while state.waiting and state.can_admit(state.waiting[0]):
            state.admit(state.waiting[0])
        budget = state.limits.max_batched_tokens
        work = []
        for request in state.running:
            if budget and not request.prompt_left:
                work.append((request, 1))
                budget -= 1
        for request in state.running:
            if budget and request.prompt_left:
                chunk = min(request.prompt_left, budget)
                work.append((request, chunk))
                budget -= chunk
        return work


SCHEDULERS = Registry("scheduler", {"fcfs": "policies.schedulers:FCFSScheduler"})
