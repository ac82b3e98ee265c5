"""The routing-trace file format: Parquet, one row per (sequence, token position, MoE layer).

Columns (see README "Trace format"):
  sequence  int32                 sequences in ascending order
  token     int32                 position within the sequence, ascending
  layer     int16                 MoE layer index 0..moe_layers-1 (dense layers are not numbered), ascending
  experts   fixed_size_list<int16>[top_k]   routed expert ids in router order; -1 = no expert recorded
  weights   fixed_size_list<float32>[top_k] optional gate weights, as the router returned them
  token_id  int32                 optional vocabulary id of the token
  phase     dictionary<string>    optional "prefill" or "decode"
  pred_<name> list<int16>         optional predicted experts for this (token, layer), e.g. a learned predictor
  candidates  fixed_size_list<int16>[n]    optional, with candidate_scores: the router's top-n (n = top_k + r)
                                  experts: the first top_k are `experts` exactly, then the r best-scoring others
                                  in descending score; -1 = none. What cache-aware routing picks from.
  candidate_scores fixed_size_list<float32>[n]  each candidate's router probability: the softmax of the router's
                                  logits over all experts, before any top-k renormalisation or scaling (so scores
                                  of different rows and models are in the same units, unlike `weights`)

Model metadata (an `MoEModel`, the original layer numbers of the MoE layers, provenance) travels as JSON in the
Parquet schema metadata under the key `moe_offload_sim`. Readers stream record batches, so replay memory is bounded
by the batch size, not the trace size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from simulator.atomic_file import AtomicFile
from simulator.errors import InputError, one_line
from simulator.model import MoEModel
from simulator.trace_rows import PHASES, TraceChunk

FORMAT_VERSION = 1
METADATA_KEY = b"moe_offload_sim"
PREDICTION_PREFIX = "pred_"
REQUIRED_COLUMNS = ("sequence", "token", "layer", "experts")
CANDIDATE_COLUMNS = ("candidates", "candidate_scores")

_ONE_BATCH: dict[tuple, list[TraceChunk]] = {}
"""The last trace read that fits one batch, by file identity and columns: a sweep's next job in the same process
replays it without reading and checking it again (a bigger trace streams, so memory stays bounded)."""


class _ModelFields(BaseModel):
    """Validation of the model metadata stored in a trace (mirrors `MoEModel`)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    moe_layers: int = Field(gt=0)
    experts_per_layer: int = Field(gt=0, le=32767)
    top_k: int = Field(gt=0)
    shared_experts: int = Field(ge=0)
    hidden_size: int = Field(gt=0)
    expert_intermediate_size: int = Field(gt=0)
    param_bytes: float = Field(gt=0)
    non_expert_params_per_layer: int = Field(ge=0)
    gated: bool = True
    kind: Literal["moe", "mole"] = "moe"
    attention_layers: int = Field(default=0, ge=0)
    attention_heads: int = Field(default=0, ge=0)
    kv_heads: int = Field(default=0, ge=0)
    head_dim: int = Field(default=0, ge=0)
    kv_latent_dim: int = Field(default=0, ge=0)
    non_expert_param_bytes: float = Field(default=0.0, ge=0)

    @field_validator("top_k")
    @classmethod
    def _top_k_fits(cls, top_k: int, info: ValidationInfo) -> int:
        experts = info.data.get("experts_per_layer")
        if experts is not None and top_k > experts:
            raise PydanticCustomError("top_k_fits", "exceeds experts_per_layer={experts}", {"experts": experts})
        return top_k


def validate_model_dict(data: dict, where: str) -> MoEModel:
    """Check a model description and return it as an `MoEModel`; errors name `where`, the field and the value."""
    try:
        return MoEModel(**_ModelFields(**data).model_dump())
    except ValidationError as err:
        raise InputError(f"{where}: {one_line(err)}") from None
    except TypeError as err:
        raise InputError(f"{where}: {err}") from None


def read_metadata(path, schema: pa.Schema, key: bytes, version: int, missing_hint: str) -> dict:
    """The JSON document under `key` in a Parquet schema's metadata, checked for presence, JSON and `version`;
    errors name `path` and the field in one line."""
    raw = (schema.metadata or {}).get(key)
    if raw is None:
        raise InputError(f"{path}: metadata '{key.decode()}' is missing ({missing_hint})")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: metadata '{key.decode()}' is not JSON ({err})") from None
    if doc.get("format_version") != version:
        raise InputError(f"{path}: metadata field 'format_version' is {doc.get('format_version')!r}, expected {version}")
    return doc


@dataclass(frozen=True)
class TraceMeta:
    model: MoEModel
    moe_layer_ids: list[int]
    """Original model layer number of each MoE layer (DeepSeek-V2-Lite: 1..26, layer 0 is dense)."""
    provenance: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "model": self.model.to_dict(),
                "moe_layer_ids": list(self.moe_layer_ids),
                "provenance": self.provenance,
            },
            sort_keys=True,
        ).encode()


def trace_schema(meta: TraceMeta, *, weights: bool, token_id: bool, phase: bool, predictions: list[str],
                 candidates: int = 0) -> pa.Schema:
    """The columns of a trace; `candidates` > 0 adds the candidates pair, that many per row."""
    k = meta.model.top_k
    fields = [
        pa.field("sequence", pa.int32(), nullable=False),
        pa.field("token", pa.int32(), nullable=False),
        pa.field("layer", pa.int16(), nullable=False),
        pa.field("experts", pa.list_(pa.int16(), k), nullable=False),
    ]
    if weights:
        fields.append(pa.field("weights", pa.list_(pa.float32(), k)))
    if token_id:
        fields.append(pa.field("token_id", pa.int32()))
    if phase:
        fields.append(pa.field("phase", pa.dictionary(pa.int8(), pa.string())))
    fields += [pa.field(PREDICTION_PREFIX + name, pa.list_(pa.int16())) for name in predictions]
    if candidates:
        fields += [pa.field("candidates", pa.list_(pa.int16(), candidates)),
                   pa.field("candidate_scores", pa.list_(pa.float32(), candidates))]
    return pa.schema(fields, metadata={METADATA_KEY: meta.to_json()})


class TraceWriter:
    """Writes a trace row group by row group, atomically: the file appears complete at `path` or not at all."""

    def __init__(
        self,
        path: str | os.PathLike,
        meta: TraceMeta,
        *,
        weights: bool = False,
        token_id: bool = False,
        phase: bool = False,
        predictions: list[str] = (),
        candidates: int = 0,
    ):
        self.path = Path(path)
        self.meta = meta
        self.schema = trace_schema(meta, weights=weights, token_id=token_id, phase=phase, predictions=list(predictions),
                                   candidates=candidates)
        self.candidates = candidates
        self._file = AtomicFile(self.path)
        self._writer = pq.ParquetWriter(self._file.tmp, self.schema, compression="zstd")
        self.rows = 0

    def write(self, chunk: TraceChunk) -> None:
        n = len(chunk)
        k = self.meta.model.top_k
        experts = np.ascontiguousarray(chunk.experts, dtype=np.int16).reshape(n, k)
        cols = {
            "sequence": pa.array(np.asarray(chunk.sequence, dtype=np.int32)),
            "token": pa.array(np.asarray(chunk.token, dtype=np.int32)),
            "layer": pa.array(np.asarray(chunk.layer, dtype=np.int16)),
            "experts": pa.FixedSizeListArray.from_arrays(pa.array(experts.ravel()), k),
        }
        names = self.schema.names
        if "weights" in names:
            w = np.ascontiguousarray(chunk.weights, dtype=np.float32).reshape(n, k)
            cols["weights"] = pa.FixedSizeListArray.from_arrays(pa.array(w.ravel()), k)
        if "token_id" in names:
            cols["token_id"] = pa.array(np.asarray(chunk.token_id, dtype=np.int32))
        if "phase" in names:
            codes = pa.array(np.asarray(chunk.phase, dtype=np.int8))
            cols["phase"] = pa.DictionaryArray.from_arrays(codes, pa.array(PHASES))
        for name in names:
            if name.startswith(PREDICTION_PREFIX):
                cols[name] = pa.array(chunk.predictions[name[len(PREDICTION_PREFIX):]], type=pa.list_(pa.int16()))
        if self.candidates:
            n_c = self.candidates
            ids = np.ascontiguousarray(chunk.candidates, dtype=np.int16).reshape(n, n_c)
            scores = np.ascontiguousarray(chunk.candidate_scores, dtype=np.float32).reshape(n, n_c)
            cols["candidates"] = pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), n_c)
            cols["candidate_scores"] = pa.FixedSizeListArray.from_arrays(pa.array(scores.ravel()), n_c)
        self._writer.write_table(pa.table(cols, schema=self.schema))
        self.rows += n

    def close(self) -> None:
        self._writer.close()
        self._file.commit()

    def abort(self) -> None:
        self._writer.close()
        self._file.abort()

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class TraceFile:
    """An open trace: metadata validated on open, rows validated as they stream by.

    Raises `InputError` naming the file, field and value for anything malformed: not Parquet, truncated, missing
    columns or metadata, expert ids out of range, rows out of order.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such trace file")
        try:
            self._file = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{self.path}: not a readable Parquet trace ({_first_line(err)})") from None
        schema = self._file.schema_arrow
        for col in REQUIRED_COLUMNS:
            if col not in schema.names:
                raise InputError(f"{self.path}: required column '{col}' is missing")
        doc = read_metadata(self.path, schema, METADATA_KEY, FORMAT_VERSION, "not a moe-offload-sim trace")
        model = validate_model_dict(doc.get("model") or {}, f"{self.path}: metadata 'model'")
        layer_ids = doc.get("moe_layer_ids") or list(range(model.moe_layers))
        if len(layer_ids) != model.moe_layers:
            raise InputError(f"{self.path}: metadata field 'moe_layer_ids' has {len(layer_ids)} entries, expected moe_layers={model.moe_layers}")
        self.meta = TraceMeta(model=model, moe_layer_ids=list(layer_ids), provenance=doc.get("provenance") or {})
        experts_type = schema.field("experts").type
        if not (pa.types.is_fixed_size_list(experts_type) and experts_type.list_size == model.top_k):
            raise InputError(f"{self.path}: column 'experts' has type {experts_type}, expected fixed_size_list of top_k={model.top_k} int16")
        self.prediction_columns = [n[len(PREDICTION_PREFIX):] for n in schema.names if n.startswith(PREDICTION_PREFIX)]
        self.has_weights = "weights" in schema.names
        self.has_token_id = "token_id" in schema.names
        self.has_phase = "phase" in schema.names
        self.candidates = self._candidate_width(schema, model.top_k)
        """Candidates per row (top_k + r) where the trace has the candidates pair, else 0."""

    def _candidate_width(self, schema: pa.Schema, top_k: int) -> int:
        present = [name for name in CANDIDATE_COLUMNS if name in schema.names]
        if not present:
            return 0
        if len(present) == 1:
            other = next(name for name in CANDIDATE_COLUMNS if name not in present)
            raise InputError(f"{self.path}: column '{present[0]}' has no '{other}' beside it (they go as a pair)")
        widths = []
        for name, kind in zip(CANDIDATE_COLUMNS, ("int16", "float32")):
            t = schema.field(name).type
            if not pa.types.is_fixed_size_list(t) or t.list_size < top_k:
                raise InputError(f"{self.path}: column '{name}' has type {t}, expected fixed_size_list of at least "
                                 f"top_k={top_k} {kind}")
            widths.append(t.list_size)
        if widths[0] != widths[1]:
            raise InputError(f"{self.path}: column 'candidate_scores' holds {widths[1]} per row, 'candidates' {widths[0]}")
        return widths[0]

    @property
    def num_rows(self) -> int:
        return self._file.metadata.num_rows

    def context_tokens(self) -> int:
        """The longest context a sequence reaches: the largest token position + 1, from the row groups' statistics
        where the file has them (no rows read), else from the token column."""
        meta, column = self._file.metadata, self._file.schema_arrow.get_field_index("token")
        stats = [meta.row_group(i).column(column).statistics for i in range(meta.num_row_groups)]
        if stats and all(s is not None and s.has_min_max for s in stats):
            return int(max(s.max for s in stats)) + 1
        tokens = self._file.read(columns=["token"]).column("token")
        return int(pc.max(tokens).as_py()) + 1 if len(tokens) else 0

    def prompt_tokens(self) -> dict[int, int]:
        """Per sequence, its prompt's length: the tokens whose rows say `phase = prefill` (a serving engine's
        requests; empty without a phase column). Refused in one line where a prefill token follows a decode one."""
        if not self.has_phase:
            return {}
        table = self._file.read(columns=["sequence", "token", "phase"])
        sequences = table.column("sequence").to_numpy()
        tokens = table.column("token").to_numpy()
        prefill = pc.fill_null(pc.equal(pc.cast(table.column("phase"), pa.string()), "prefill"), False).to_numpy(zero_copy_only=False)
        first = np.ones(len(sequences), dtype=bool)  # each token's first row
        first[1:] = (sequences[1:] != sequences[:-1]) | (tokens[1:] != tokens[:-1])
        rows = np.flatnonzero(first)
        sequence, is_prefill = sequences[rows], prefill[rows]
        late = np.flatnonzero((sequence[1:] == sequence[:-1]) & is_prefill[1:] & ~is_prefill[:-1])
        if len(late):
            row = int(rows[late[0] + 1])
            raise InputError(f"{self.path}: row {row}: phase=prefill after a decode token of sequence "
                             f"{int(sequences[row])} (a request's prompt comes first)")
        ids, counts = np.unique(sequence[is_prefill], return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist()))

    def chunks(
        self, *, batch_rows: int = 1 << 16, predictions: list[str] = (), extras: bool = False, weights: bool = False,
        token_ids: bool = False, candidates: bool = False,
    ) -> Iterator[TraceChunk]:
        """Stream the trace in row order. `weights` adds gate weights, `token_ids` token ids, `extras` weights, token
        ids and phase, where present; `candidates` the candidates pair, which the trace must have."""
        for name in predictions:
            if name not in self.prediction_columns:
                raise InputError(f"{self.path}: prediction column '{PREDICTION_PREFIX}{name}' is missing (has: {self.prediction_columns})")
        columns = list(REQUIRED_COLUMNS) + [PREDICTION_PREFIX + n for n in predictions]
        wanted = (("weights", weights or extras, self.has_weights), ("token_id", token_ids or extras, self.has_token_id),
                  ("phase", extras, self.has_phase))
        columns += [c for c, asked, present in wanted if asked and present]
        if candidates:
            if not self.candidates:
                raise InputError(f"{self.path}: columns 'candidates' and 'candidate_scores' are missing (record them "
                                 "with moe-trace record --candidates R)")
            columns += CANDIDATE_COLUMNS
        if self.num_rows > batch_rows:
            yield from self._read(batch_rows, columns, predictions)
            return
        stat = self.path.stat()
        key = (self.path.resolve(), stat.st_ino, stat.st_mtime_ns, stat.st_size, tuple(columns))
        if key not in _ONE_BATCH:
            chunks = list(self._read(batch_rows, columns, predictions))
            for chunk in chunks:  # shared by the jobs to come: none may change another's input
                for array in (chunk.sequence, chunk.token, chunk.layer, chunk.experts, chunk.weights, chunk.token_id,
                              chunk.phase, chunk.candidates, chunk.candidate_scores):
                    if array is not None:
                        array.setflags(write=False)
            _ONE_BATCH.clear()
            _ONE_BATCH[key] = chunks
        yield from map(replace, _ONE_BATCH[key])

    def _read(self, batch_rows: int, columns: list[str], predictions) -> Iterator[TraceChunk]:
        last = None
        row = 0
        try:
            batches = self._file.iter_batches(batch_size=batch_rows, columns=columns)
            for batch in batches:
                chunk = self._to_chunk(batch, predictions)
                last = self._check(chunk, row, last)
                row += len(chunk)
                yield chunk
        except (pa.ArrowException, OSError) as err:
            raise InputError(f"{self.path}: unreadable at row {row} ({_first_line(err)})") from None

    def _to_chunk(self, batch: pa.RecordBatch, predictions) -> TraceChunk:
        k = self.meta.model.top_k
        get = batch.column
        for col in REQUIRED_COLUMNS:
            if get(col).null_count:
                raise InputError(f"{self.path}: column '{col}' has null values")
        experts = get("experts").flatten().to_numpy(zero_copy_only=False).astype(np.int16, copy=False).reshape(-1, k)
        chunk = TraceChunk(
            sequence=get("sequence").to_numpy(),
            token=get("token").to_numpy(),
            layer=get("layer").to_numpy(),
            experts=experts,
            predictions={n: get(PREDICTION_PREFIX + n).to_pylist() for n in predictions},
        )
        names = batch.schema.names
        if "weights" in names:
            chunk.weights = get("weights").flatten().to_numpy(zero_copy_only=False).reshape(-1, k)
        if "token_id" in names:
            if get("token_id").null_count:
                raise InputError(f"{self.path}: column 'token_id' has null values")
            chunk.token_id = get("token_id").to_numpy()
        if "phase" in names:
            phase = get("phase")
            chunk.phase = np.array([PHASES.index(p) for p in phase.to_pylist()], dtype=np.int8)
        if "candidates" in names:
            for name in CANDIDATE_COLUMNS:
                if get(name).null_count or get(name).flatten().null_count:
                    raise InputError(f"{self.path}: column '{name}' has null values")
            chunk.candidates = get("candidates").flatten().to_numpy(zero_copy_only=False).astype(np.int16, copy=False).reshape(-1, self.candidates)
            chunk.candidate_scores = get("candidate_scores").flatten().to_numpy(zero_copy_only=False).reshape(-1, self.candidates)
        return chunk

    def _check(self, chunk: TraceChunk, row0: int, last):
        """Validate one chunk; returns the (sequence, token, layer) of its last row for the next chunk's order check."""
        model = self.meta.model
        if len(chunk) == 0:
            return last

        def fail(field_name: str, i: int, value, why: str):
            raise InputError(f"{self.path}: row {row0 + int(i)}: field '{field_name}' = {value} {why}")

        bad = np.flatnonzero((chunk.layer < 0) | (chunk.layer >= model.moe_layers))
        if bad.size:
            fail("layer", bad[0], chunk.layer[bad[0]], f"is outside 0..{model.moe_layers - 1}")
        e = chunk.experts
        if (fault := _id_fault(e, model.experts_per_layer)) is not None:
            fail("experts", fault[0], e[fault[0]].tolist(), fault[1])
        for name, rows in chunk.predictions.items():
            for i, ids in enumerate(rows):
                if ids is not None and any(x < 0 or x >= model.experts_per_layer for x in ids):
                    fail(PREDICTION_PREFIX + name, i, ids, f"has an id outside 0..{model.experts_per_layer - 1}")
        if chunk.candidates is not None:
            self._check_candidates(chunk, fail)
        # Rows must be strictly increasing in (sequence, token, layer), across chunk boundaries too.
        seq = chunk.sequence.astype(np.int64)
        tok = chunk.token.astype(np.int64)
        lay = chunk.layer.astype(np.int64)
        if last is not None:
            seq = np.concatenate(([last[0]], seq))
            tok = np.concatenate(([last[1]], tok))
            lay = np.concatenate(([last[2]], lay))
        ds, dt, dl = np.diff(seq), np.diff(tok), np.diff(lay)
        ok = (ds > 0) | ((ds == 0) & ((dt > 0) | ((dt == 0) & (dl > 0))))
        bad = np.flatnonzero(~ok)
        if bad.size:
            i = bad[0] + 1
            off = 1 if last is not None else 0
            fail("sequence/token/layer", i - off, (int(seq[i]), int(tok[i]), int(lay[i])),
                 f"is not after the previous row {(int(seq[i - 1]), int(tok[i - 1]), int(lay[i - 1]))} (rows must be sorted)")
        return int(chunk.sequence[-1]), int(chunk.token[-1]), int(chunk.layer[-1])


    def _check_candidates(self, chunk: TraceChunk, fail) -> None:
        """The candidates name experts of the model, none twice, the routed ones first; their scores are numbers."""
        model = self.meta.model
        c, k = chunk.candidates, model.top_k
        if (fault := _id_fault(c, model.experts_per_layer)) is not None:
            fail("candidates", fault[0], c[fault[0]].tolist(), fault[1])
        bad = np.flatnonzero((c[:, :k] != chunk.experts).any(axis=1))
        if bad.size:
            fail("candidates", bad[0], c[bad[0]].tolist(), f"does not begin with the routed experts {chunk.experts[bad[0]].tolist()}")
        bad = np.flatnonzero(~np.isfinite(chunk.candidate_scores).all(axis=1))
        if bad.size:
            fail("candidate_scores", bad[0], chunk.candidate_scores[bad[0]].tolist(), "is not finite")


def _id_fault(ids: np.ndarray, experts: int) -> tuple[int, str] | None:
    """The first row of expert ids [rows, n] (-1: none) naming an expert outside the model or one twice, and why."""
    bad = np.flatnonzero(((ids < -1) | (ids >= experts)).any(axis=1))
    if bad.size:
        return int(bad[0]), f"has an id outside 0..{experts - 1} (experts_per_layer={experts})"
    s = np.sort(ids, axis=1)
    bad = np.flatnonzero(((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)).any(axis=1))
    if bad.size:
        return int(bad[0]), "repeats an expert"
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
