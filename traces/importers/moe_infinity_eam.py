"""MoE-Infinity Expert Activation Matrix collections (`.npy`, [N sequences, L layers, E experts] counts).

An EAM collection has no token order, so it becomes prefetcher training data, not a routing trace: the import
writes our EAM collection file (`traces/eam.py`: Parquet, one row per (sequence, layer), validated), which
`traces.eam.load_eam_collection` returns as an int64 [N, L, E] array. The `.npy` is read with
`allow_pickle=False`: an object array is refused, nothing is unpickled. Several inputs are concatenated in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from simulator.model import MoEModel
from simulator.presets import get_preset
from traces.eam import check_eam_array, read_npy, write_eam_collection
from traces.importers import ImportSummary, expand_inputs

IMPORTER_VERSION = 1
DEFAULT_MODEL = "deepseek-v2-lite"


def import_files(inputs: Iterable[str | Path], out: str | Path, model: MoEModel | None = None) -> ImportSummary:
    """Validate `.npy` collections (files, or folders of them in natural name order) and write one EAM collection."""
    files = expand_inputs(inputs, ".npy")
    model = model or get_preset(DEFAULT_MODEL)
    arrays = [check_eam_array(read_npy(path), str(path), model) for path in files]
    eam = np.concatenate(arrays)
    # Every layer routes every token top_k times, so a layer's row sum / top_k is the sequence's token count.
    tokens = int(np.ceil(eam.sum(axis=2).max(axis=1) / model.top_k).sum())
    write_eam_collection(out, eam, model, list(range(model.moe_layers)), {
        "source_format": "moe-infinity-eam-npy",
        "importer": __name__,
        "importer_version": IMPORTER_VERSION,
        "files": [p.name for p in files],
        "sequences_per_file": [len(a) for a in arrays],
    })
    note = (f"an EAM collection is prefetcher training data, not a replayable trace: load it with "
            f"traces.eam.load_eam_collection (tokens are inferred as max layer count / top_k)")
    return ImportSummary(Path(out), eam.shape[0] * eam.shape[1], eam.shape[0], tokens, notes=[note])
