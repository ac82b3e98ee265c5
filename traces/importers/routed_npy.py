"""Routed-expert arrays saved one request per file: `.npz` or `.npy` (a folder stands for its files in natural name
order), e.g. vLLM's offline `RequestOutput.prompt_routed_experts` and `CompletionOutput.routed_experts` saved with
numpy, or an RL framework's per-sample `[tokens, layers, top_k]` array.

`.npz` keys: `routed_experts` [tokens, layers, top_k], and either `prompt_routed_experts` [prompt, layers, top_k]
(vLLM's split: the prompt's rows come first) or `prompt_tokens` (a 0-d integer: the first rows are the prompt, the
merged layout of vLLM main and SGLang). Other keys are ignored. A `.npy` holds one [tokens, layers, top_k] array and
says nothing of where its prompt ends, so `.npy` files import without a phase column and do not mix with `.npz`
files in one import. The layer axis and the checks are those of traces/importers/routed_experts.py. Files are read
with allow_pickle=False: nothing is unpickled.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from simulator.errors import InputError
from simulator.model import MoEModel
from traces.eam import read_npy
from traces.importers import ImportSummary, expand_inputs
from traces.importers.routed_experts import Request, import_requests

IMPORTER_VERSION = 1
DEFAULT_MODEL = None
"""No default: the arrays do not name their model; `--model` is required."""
SUFFIXES = (".npz", ".npy")


def import_files(inputs: Iterable[str | Path], out: str | Path, model: MoEModel | None = None) -> ImportSummary:
    """Import per-request `.npz`/`.npy` files (or folders of them) into one trace, one sequence per file."""
    if model is None:
        raise InputError("arguments: --model is required for --format routed-npy (the arrays do not name their model)")
    files = expand_inputs(inputs, SUFFIXES)

    def read() -> Iterator[Request]:
        for path in files:
            info = {"file": path.name}
            if path.name.endswith(".npy"):
                yield Request(read_npy(path), None, f"{path}: array", info)
            else:
                yield _npz_request(path, info)

    return import_requests(read, files, out, model, {
        "source_format": "routed-npy",
        "importer": __name__,
        "importer_version": IMPORTER_VERSION,
        "guesses": ".npz keys are vLLM's names: prompt_routed_experts rows then routed_experts, or routed_experts "
                   "with its first prompt_tokens rows the prompt; .npy: no prompt/output split",
    })


def _npz_request(path: Path, info: dict) -> Request:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "routed_experts" not in arrays.files:
                raise InputError(f"{path}: array 'routed_experts' is missing (has {sorted(arrays.files)})")
            experts = arrays["routed_experts"]
            if "prompt_routed_experts" in arrays.files:
                prompt = arrays["prompt_routed_experts"]
                if prompt.ndim != 3 or experts.ndim != 3 or prompt.shape[1:] != experts.shape[1:]:
                    raise InputError(f"{path}: array 'routed_experts': shape {experts.shape} does not continue "
                                     f"'prompt_routed_experts' {prompt.shape} (both [tokens, layers, top_k])")
                return Request(np.concatenate([prompt, experts]), len(prompt), f"{path}: arrays", info)
            if "prompt_tokens" not in arrays.files:
                raise InputError(f"{path}: array 'prompt_tokens' is missing, and so is 'prompt_routed_experts': where "
                                 f"the prompt ends is unknown (a .npy file imports without phases)")
            count = arrays["prompt_tokens"]
            if count.shape != () or count.dtype.kind not in "iu":
                raise InputError(f"{path}: array 'prompt_tokens': {count.dtype} {count.shape} is not one integer")
            return Request(experts, int(count), f"{path}: array 'routed_experts'", info)
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: npz: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
