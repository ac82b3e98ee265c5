"""Plug-ins of one kind by short name: one `Registry` per kind (cache policies, prefetchers, miss handlers, importers).

Entries are import paths ("package.module:Class", "package.module.Class" or a module "package.module"), imported only
when asked for, as Gymnasium registers environments: listing the names costs no import. A name may stand for the
absent plug-in (entry None: `prefetch=none`, `miss=load`), so that every choice, the default too, has a name.
A user's class needs no entry (Hydra's `_target_` reaches any importable path); `register` gives it a short name.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping

from simulator.errors import InputError


class Registry(Mapping[str, "str | None"]):
    def __init__(self, kind: str, entries: Mapping[str, str | None] = ()):
        self.kind = kind
        """The config key this kind is chosen by (`policy`, `prefetch`, `miss`, ...); errors name it."""
        self._entries: dict[str, str | None] = dict(entries)

    def register(self, name: str, entry: str | None) -> None:
        """Make `entry` (an import path, or None for the absent plug-in) available as `name`."""
        self._entries[name] = entry

    def __getitem__(self, name: str) -> str | None:
        try:
            return self._entries[name]
        except KeyError:
            raise InputError(self.unknown(name)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def unknown(self, name: str) -> str:
        """The one-line refusal of an unknown name, with the closest registered names."""
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"{self.kind}: unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._entries))})"

    def load(self, name: str | None):
        """What `name` registers (a class, function or module), or what an import path names; None for the absent
        plug-in."""
        if name is None:
            return None
        entry = self._entries[name] if name in self._entries else name
        if entry is None:
            return None
        if ":" in entry:
            module_name, _, attr = entry.partition(":")
        else:
            try:
                return importlib.import_module(entry)  # a module path
            except ImportError:
                module_name, _, attr = entry.rpartition(".")
            if not module_name:
                raise InputError(self.unknown(name)) from None
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            raise InputError(f"{self.kind}: cannot import {entry!r} for {self.kind} {name!r} "
                             f"(known: {', '.join(sorted(self._entries))})") from None

    def name_of(self, target: str | None) -> str:
        """The registered short name of a `_target_` (a class path, either separator; None: the absent plug-in's
        name); a path nobody registered is returned as given."""
        for name, entry in self._entries.items():
            if entry == target or (entry is not None and target is not None and entry.replace(":", ".") == target.replace(":", ".")):
                return name
        return str(target)
