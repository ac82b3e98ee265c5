"""SGLang's routed experts (`--enable-return-routed-experts`, and `return_routed_experts: true` per request): a JSONL
of responses, one response per line.

What SGLang returns (read 2026-12 in sgl-project/sglang):
- native /generate: `meta_info.routed_experts`, base64 of the raw bytes of a C-order int32 array, no header, of
  logical shape [seqlen - 1, num_hidden_layers, num_experts_per_tok], beside `meta_info.prompt_tokens` and
  `meta_info.completion_tokens` (python/sglang/srt/layers/moe/routed_experts_capturer.py: get_routed_experts takes
  the request's first seqlen - 1 token slots of the host buffer, extract_routed_experts_from_meta_info decodes with
  dtype int32; the tokenizer manager encodes `tobytes()` with base64). seqlen is prompt + output, so the prompt
  comes first and the last sampled token, never fed back, has no row.
- OpenAI-compatible endpoints: the same string in each choice's `sgl_ext.routed_experts`, with `usage.prompt_tokens`
  (the "Returning Routed Experts" section of SGLang's OpenAI API docs, sgl-project/sglang PR 24851).
- The layer axis counts every decoder layer, dense ones too (the buffers are sized by num_hidden_layers, start at
  zero, and only MoE layers write them): traces/importers/routed_experts.py drops the all-0 ones.

The flat array is shaped with rows = prompt + completion - 1 where the completion's length is known (native, or an
OpenAI response with one choice), else with the model's L MoE layers. Each response (each choice) becomes one
sequence, its first prompt_tokens rows the prompt.
Guesses: a request with `routed_experts_start_len` gets only rows from that prefix on, and the response does not say
so; its array no longer fits prompt + completion - 1 rows and is refused rather than placed. A missing or null
`routed_experts` is refused, not skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.importers import ImportSummary, jsonl_objects
from traces.importers.routed_experts import Request, import_responses, int32_base64

IMPORTER_VERSION = 1
DEFAULT_MODEL = None
"""No default: a response does not name a preset; `--model` is required."""


def import_files(inputs: Iterable[str | Path], out: str | Path, model: MoEModel | None = None) -> ImportSummary:
    """Import JSONL files of SGLang responses (or folders of them, in natural name order) into one trace."""
    return import_responses(inputs, out, model, "sglang-routed", __name__, IMPORTER_VERSION,
                            "flat int32 shaped [prompt + completion - 1, layers, top_k]; the first prompt_tokens rows are "
                            "the prompt; the last sampled token has no row; all-0 layers are dense and dropped",
                            lambda path: _requests(path, model))


def _requests(path: Path, model: MoEModel) -> Iterator[Request]:
    count = 0
    for number, obj in jsonl_objects(path):
        where = f"{path}: line {number}"
        if isinstance(obj.get("meta_info"), dict):
            meta = obj["meta_info"]
            counts = _count(meta, "prompt_tokens", "meta_info", where), _count(meta, "completion_tokens", "meta_info", where)
            info = {"file": path.name, "line": number, "id": meta.get("id")}
            yield _request(meta.get("routed_experts"), *counts, f"{where}: field 'meta_info.routed_experts'", info, model)
        elif isinstance(obj.get("choices"), list) and obj["choices"]:
            usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
            prompt = _count(usage, "prompt_tokens", "usage", where)
            completion = _count(usage, "completion_tokens", "usage", where) if len(obj["choices"]) == 1 else None
            for i, choice in enumerate(obj["choices"]):
                ext = choice.get("sgl_ext") if isinstance(choice, dict) else None
                value = ext.get("routed_experts") if isinstance(ext, dict) else None
                info = {"file": path.name, "line": number, "choice": i, "id": obj.get("id")}
                yield _request(value, prompt, completion, f"{where}: field 'choices[{i}].sgl_ext.routed_experts'", info, model)
        else:
            raise InputError(f"{where}: field 'meta_info' is missing, and so is 'choices' (one response object per line)")
        count += 1
    if not count:
        raise InputError(f"{path}: rows: the file has no responses")


def _request(value, prompt: int, completion: int | None, where: str, info: dict, model: MoEModel) -> Request:
    """The flat ids shaped [rows, layers, top_k]: rows from the token counts where known, else layers = L."""
    if value is None:
        raise InputError(f"{where} is missing or null (was the server started with --enable-return-routed-experts, "
                         f"and the request sent return_routed_experts?)")
    flat = int32_base64(value, where)
    k = model.top_k
    if completion is not None:
        rows = prompt + completion - 1
        if rows <= 0 or flat.size % (rows * k):
            raise InputError(f"{where}: {flat.size:,} ids are not {rows:,} rows (prompt {prompt} + completion "
                             f"{completion} - 1) of top_k={k} ids in a whole number of layers")
        return Request(flat.reshape(rows, -1, k), prompt, where, info)
    if flat.size % (model.moe_layers * k):
        raise InputError(f"{where}: {flat.size:,} ids are not whole rows of {model.moe_layers} MoE layers × top_k={k} "
                         f"({model.name}; with several choices the completion lengths are unknown)")
    return Request(flat.reshape(-1, model.moe_layers, k), prompt, where, info)


def _count(fields: dict, name: str, parent: str, where: str) -> int:
    value = fields.get(name)
    if value is None:
        raise InputError(f"{where}: field '{parent}.{name}' is missing")
    if type(value) is not int or value < 0:
        raise InputError(f"{where}: field '{parent}.{name}': {value!r} is not a non-negative integer")
    return value
