"""Where each field of the long format comes from (`--columns`), so that a data set with its own column names and
layout imports without an importer of its own: FLAME-MoE's traces (Hugging Face CMU-FLAME/FLAME-MoE-Traces), for
one, are a Parquet file per MoE layer (`actives/iter_NNNN/layer_NN.parquet`) whose rows are tokens with list columns
`indices` (top-6 expert ids, 0-63) and `scores` (their router probabilities, float16).

`--columns FIELD=SOURCE,...` overrides the default, each field read from the column of its own name.
FIELD: sequence, token, layer, expert (or experts), weight (or weights). SOURCE:
  NAME        the column NAME
  @file       the last number in the file's name (layer_02.parquet → 2)
  @row        the row's index in its file, from 0; @row//N and @row%N its quotient and remainder by N (sequences
              of N tokens laid end to end: sequence=@row//2048,token=@row%2048)
  a number    the same value on every row (sequence=0)
expert and weight come from columns. A column of lists as expert holds one (sequence, token, layer) per row, its
top_k experts in router order; its weight column, if any, then holds lists of the same lengths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.errors import InputError

FIELDS = ("sequence", "token", "layer", "expert", "weight")
ALIASES = {"experts": "expert", "weights": "weight"}
_DERIVED = re.compile(r"^@(?:file|row(?:(//|%)([1-9]\d{0,9}))?)$")
_NUMBER = re.compile(r"^\d{1,10}$")


@dataclass(frozen=True)
class ColumnMap:
    sources: dict[str, str]
    """Each field's source: a column name, @file, @row[//N|%N] or a number."""
    explicit: frozenset[str] = frozenset()
    """The fields `--columns` named (an explicit weight column must exist; the default one may be absent)."""

    @classmethod
    def parse(cls, text: str | None) -> "ColumnMap":
        """The map `--columns TEXT` describes; InputError naming the item that does not parse."""
        sources = {name: name for name in FIELDS}
        explicit: set[str] = set()
        for item in (part.strip() for part in (text or "").split(",")):
            if not item:
                continue
            name, eq, source = (part.strip() for part in item.partition("="))
            name = ALIASES.get(name, name)
            if not eq or name not in sources or not source:
                raise InputError(f"arguments: --columns: {item!r} is not FIELD=SOURCE with FIELD one of {', '.join(FIELDS)}")
            if name in explicit:
                raise InputError(f"arguments: --columns: {name} is given twice")
            if source.startswith("@") and not _DERIVED.match(source):
                raise InputError(f"arguments: --columns: {item!r}: {source!r} is not @file, @row, @row//N or @row%N")
            if name in ("expert", "weight") and (source.startswith("@") or _NUMBER.match(source)):
                raise InputError(f"arguments: --columns: {item!r}: {name} must come from a column")
            sources[name] = source
            explicit.add(name)
        return cls(sources, frozenset(explicit))

    def column(self, name: str) -> str | None:
        """The column a field is read from; None where it is derived or a number."""
        source = self.sources[name]
        return None if source.startswith("@") or _NUMBER.match(source) else source

    def label(self, name: str) -> str:
        """The field as error messages name it, with its source where that is not the column of its name."""
        source = self.sources[name]
        if source == name:
            return f"field '{name}'"
        return f"field '{name}' ({f'column {source!r}' if self.column(name) else source})"

    def derived(self, name: str, path: Path, rows: int) -> np.ndarray:
        """The values of a field that no column holds, for a file of `rows` rows."""
        source = self.sources[name]
        if _NUMBER.match(source):
            return np.full(rows, int(source), dtype=np.int64)
        if source == "@file":
            numbers = re.findall(r"\d+", path.name)
            if not numbers:
                raise InputError(f"{path}: {self.label(name)}: the file name has no number")
            return np.full(rows, int(numbers[-1]), dtype=np.int64)
        index = np.arange(rows, dtype=np.int64)
        op, n = _DERIVED.match(source).groups()
        return index if op is None else index // int(n) if op == "//" else index % int(n)

    def describe(self) -> dict[str, str]:
        """The fields `--columns` changed, for the provenance."""
        return {name: self.sources[name] for name in FIELDS if name in self.explicit}
