"""Requests: the trace's sequences as a serving engine sees them, with the times the batched replay gives them.

A request's prompt is its first `prompt_tokens` tokens (the trace's `prefill` rows, or `serve.prompt_tokens`); its
output tokens are the rest. The iteration that completes the prompt emits the first output token (the last prompt
position's logits give it), or, without a prompt, the iteration of the request's first token; `finish_s` is the end
of the iteration of its last token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.trace_rows import Token


@dataclass(eq=False)
class Request:
    sequence: int
    arrival_s: float
    tokens: list[Token]
    prompt_tokens: int
    done: int = 0
    """Tokens already computed (their KV is cached)."""
    admitted_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    previous: dict[int, list[int]] | None = field(default=None, repr=False)
    """The routing of its latest computed token (a prefetcher's `previous_routing`)."""

    @property
    def prompt_left(self) -> int:
        return max(0, self.prompt_tokens - self.done)

    @property
    def output_tokens(self) -> int:
        return len(self.tokens) - self.prompt_tokens

    @property
    def first_token_at(self) -> int:
        """Tokens done when the first output token is out."""
        return max(self.prompt_tokens, 1)

    @property
    def finished(self) -> bool:
        return self.done == len(self.tokens)


def requests_from_tokens(tokens, arrivals: dict[int, float] | None = None, prompt_tokens: dict[int, int] | int = 0) -> list[Request]:
    """One request per sequence of `tokens` (trace order), arriving at `arrivals[sequence]` (default 0) with a prompt
    of `prompt_tokens[sequence]` tokens (or the same number for all, at most the sequence's length)."""
    requests: list[Request] = []
    for token in tokens:
        if not requests or requests[-1].sequence != token.sequence:
            sequence = token.sequence
            prompt = prompt_tokens if isinstance(prompt_tokens, int) else prompt_tokens.get(sequence, 0)
            arrival = 0.0 if arrivals is None else arrivals[sequence]
            requests.append(Request(sequence, float(arrival), [], prompt))
        requests[-1].tokens.append(token)
    for request in requests:
        request.prompt_tokens = min(request.prompt_tokens, len(request.tokens))
    return requests
