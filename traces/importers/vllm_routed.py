"""vLLM's routed experts (`vllm serve --enable-return-routed-experts`): a JSONL of responses, one response per line.

What vLLM returns (read 2026-12 in vllm-project/vllm):
- main: each choice's `routed_experts`, a base64 string of `.npy` bytes (np.save), shape
  (num_tokens - 1, num_moe_layers, top_k), dtype uint8/uint16, prompt and output tokens together; the last sampled
  token was never fed back, so it has no row (vllm/entrypoints/openai/completion/protocol.py,
  CompletionResponseChoice; the same field on GenerateResponseChoice in vllm/entrypoints/serve/disagg/protocol.py for
  /inference/v1/generate). The prompt's length is the choice's `prompt_token_ids` (with return_token_ids), the
  response's `prompt_token_ids`, or `usage.prompt_tokens`.
- v0.21 (docs/training/routed_experts_replay.md): the response's `prompt_routed_experts` [prompt_len, L, top_k],
  shared by its n choices, and each choice's `routed_experts` [gen_len, L, top_k] (gen_len ≤ completion tokens),
  both nested JSON lists of int16; prefix-cached prompt positions hold -1 there.
- The layer axis is the MoE layers only: the capture buffer is (L, N, K) over the FusedMoE layers (the same doc,
  "Device Cache"), so moe_layer_ids are 0..L-1.

Each choice becomes one sequence: with `prompt_routed_experts`, those rows and then the choice's; without, the
choice's array, its first prompt-length rows the prompt. Either field may be a base64 `.npy` string or nested lists.
Guesses: a /inference/v1/generate response carries no prompt length (its request's token_ids had it), so such a line
must add `usage.prompt_tokens` or `prompt_token_ids`; a null `routed_experts` (an aborted request, or the server
flag off) is refused, not skipped, so that a trace never silently lacks requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.importers import ImportSummary, jsonl_objects
from traces.importers.routed_experts import Request, import_responses, nested_array, npy_base64

IMPORTER_VERSION = 1
DEFAULT_MODEL = None
"""No default: a response names the served model, not a preset; `--model` is required."""


def import_files(inputs: Iterable[str | Path], out: str | Path, model: MoEModel | None = None) -> ImportSummary:
    """Import JSONL files of vLLM responses (or folders of them, in natural name order) into one trace."""
    return import_responses(inputs, out, model, "vllm-routed", __name__, IMPORTER_VERSION,
                            "one sequence per choice; prompt rows from prompt_routed_experts, else the first prompt-length "
                            "rows (prompt_token_ids or usage.prompt_tokens); the last sampled token has no row",
                            _requests)


def _requests(path: Path) -> Iterator[Request]:
    count = 0
    for number, obj in jsonl_objects(path):
        where = f"{path}: line {number}"
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InputError(f"{where}: field 'choices' is missing or empty (one response object per line)")
        prompt = obj.get("prompt_routed_experts")
        prompt = None if prompt is None else _array(prompt, f"{where}: field 'prompt_routed_experts'")
        for i, choice in enumerate(choices):
            name = f"{where}: field 'choices[{i}].routed_experts'"
            value = choice.get("routed_experts") if isinstance(choice, dict) else None
            if value is None:
                raise InputError(f"{name} is missing or null (was the server started with --enable-return-routed-experts?)")
            array = _array(value, name)
            info = {"file": path.name, "line": number, "choice": i, "id": obj.get("id", obj.get("request_id"))}
            if prompt is None:
                yield Request(array, _prompt_tokens(obj, choice, i, where), name, info)
                continue
            if prompt.ndim != 3 or array.ndim != 3 or prompt.shape[1:] != array.shape[1:]:
                raise InputError(f"{name}: shape {array.shape} does not continue 'prompt_routed_experts' {prompt.shape} "
                                 f"(both [tokens, layers, top_k])")
            yield Request(np.concatenate([prompt, array]), len(prompt), name, info)
        count += 1
    if not count:
        raise InputError(f"{path}: rows: the file has no responses")


def _array(value, where: str) -> np.ndarray:
    return npy_base64(value, where) if isinstance(value, str) else nested_array(value, where)


def _prompt_tokens(obj: dict, choice: dict, i: int, where: str) -> int:
    """The prompt's length for a choice whose array holds prompt and output together."""
    for name, value in ((f"choices[{i}].prompt_token_ids", choice.get("prompt_token_ids")),
                        ("prompt_token_ids", obj.get("prompt_token_ids"))):
        if value is not None:
            if not isinstance(value, list):
                raise InputError(f"{where}: field '{name}': {type(value).__name__} is not a list of token ids")
            return len(value)
    usage = obj.get("usage")
    value = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if value is None:
        raise InputError(f"{where}: field 'usage.prompt_tokens' is missing, and so are 'prompt_token_ids' and "
                         f"'prompt_routed_experts': where the prompt ends is unknown")
    if type(value) is not int or value < 0:
        raise InputError(f"{where}: field 'usage.prompt_tokens': {value!r} is not a non-negative integer")
    return value
