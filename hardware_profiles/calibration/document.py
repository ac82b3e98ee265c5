"""The profile document: a hardware profile built from measurements, as `moe-calibrate` and `moe-validate` write it.

Both measure a machine and write what they measured as a profile that `moe-sim hardware=FILE` loads. What they
measure differs (a whole machine; a miniature one whose CPU stands in for the GPU), and so do the sections' numbers
and texts, which each builds; the document around them is this module's: the citation every number carries, the
sections in the schema's order, the storage path as a section or, while the schema has none, as a comment block,
and the validated, atomic write.
"""

from __future__ import annotations

import os
import socket
from datetime import date
from pathlib import Path

import yaml

from hardware_profiles.schema import ProfileFile
from simulator.atomic_file import atomic_write_bytes


def citation(tool: str, host: str | None = None, day: str | None = None) -> str:
    """How every measured number is cited: "measured by <tool> on <host> <date>" (default: this host, today)."""
    return f"measured by {tool} on {host or socket.gethostname()} {day or date.today().isoformat()}"


def profile_document(name: str, description: str, *, gpu: dict, h2d: dict, d2h: dict, cpu: dict,
                     nvme: dict | None = None) -> tuple[dict, list[str]]:
    """The profile as a YAML-ready mapping of the given sections, in the schema's order, and the comment lines that
    go above it: the storage read path (`nvme`, where measured) is a section where the schema has one, else a
    comment block."""
    doc = {"name": name, "description": description, "gpu": gpu, "h2d": h2d, "d2h": d2h, "cpu": cpu}
    comments = []
    if nvme is not None:
        if "nvme" in ProfileFile.model_fields:
            doc["nvme"] = nvme
        else:
            comments.append("Storage read path (no section for it in the schema yet):")
            comments += [f"  {line}" for line in yaml.safe_dump({"nvme": nvme}, sort_keys=False, width=10**6).splitlines()]
    return doc, comments


def write_profile(path: str | os.PathLike, doc: dict, comments: list[str]) -> None:
    """Validate `doc` against the schema, then write it with `comments` on top (atomically: a profile is complete
    or absent)."""
    ProfileFile.model_validate(doc)
    header = "".join(f"# {line}\n" for line in [*comments, "SI units, the unit in each key's name."])
    body = yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)
    atomic_write_bytes(Path(path), (header + body).encode("utf-8"))
