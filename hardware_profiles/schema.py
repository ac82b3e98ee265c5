"""YAML hardware profiles, validated at the edge into the plain dataclasses of `simulator.hardware`.

A profile is a YAML mapping: `name` (the file stem), `description`, and four sections `gpu`, `h2d`, `d2h`, `cpu`
whose keys are the dataclass fields, in SI units with the unit in the key name (`bandwidth_Bps`, `latency_s`).
Every number must say where it came from: a section carries `source` (one citation for the whole section) and/or
`sources` (field -> citation). Citations are checked for presence only; they never reach the simulator core.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from simulator.errors import InputError, one_line
from simulator.hardware import CPUSpec, GPUSpec, HardwareProfile, LinkSpec

PROFILE_DIR = Path(__file__).parent
"""Where the shipped profiles live: a bare name `x` means `PROFILE_DIR / "x.yaml"`."""

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Citation = Annotated[str, Field(min_length=1)]
_NOT_NUMBERS = ("name", "source", "sources", "preempt_prefetch", "sharing")  # modelling choices, not measurements


class _Cited(BaseModel):
    """A profile section whose every number carries a citation, via `source`, `sources` or both."""

    model_config = ConfigDict(extra="forbid")
    source: Citation | None = None
    sources: dict[str, Citation] = {}

    @classmethod
    def numbers(cls) -> list[str]:
        return [f for f in cls.model_fields if f not in _NOT_NUMBERS]

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value, info):
        """YAML reads `yes`, `on` and `true` as booleans, which pydantic would quietly take for 1."""
        if isinstance(value, bool) and info.field_name not in _NOT_NUMBERS:
            raise PydanticCustomError("bool_number", "expected a number, got a boolean")
        return value

    @field_validator("sources")
    @classmethod
    def _cites_known_fields(cls, sources: dict[str, str]) -> dict[str, str]:
        fields = [f for f in cls.model_fields if f not in ("source", "sources")]  # a modelling choice may be cited too
        unknown = sorted(set(sources) - set(fields))
        if unknown:
            raise PydanticCustomError("unknown_citation", f"cites unknown field(s) {unknown}; fields are {fields}")
        return sources

    @model_validator(mode="after")
    def _every_number_cited(self):
        missing = [f for f in self.numbers() if getattr(self, f) is not None and f not in self.sources]
        if self.source is None and missing:
            raise PydanticCustomError("uncited", f"no source for {missing}: add a `source` line or `sources` entries")
        return self

    def dataclass_kwargs(self) -> dict:
        """The dataclass fields, citations dropped."""
        return self.model_dump(exclude={"source", "sources"})


class GPUFields(_Cited):
    name: str = Field(min_length=1)
    memory_bytes: int = Field(gt=0)
    memory_bandwidth_Bps: Positive
    flops: Positive
    kernel_overhead_s: NonNegative
    transfer_slowdown: NonNegative | None = None
    """`GPUSpec.transfer_slowdown`; unset means 0."""
    fetched_slowdown: NonNegative | None = None
    """`GPUSpec.fetched_slowdown`; unset means 0."""
    last_fetch_slowdown: NonNegative | None = None
    """`GPUSpec.last_fetch_slowdown`; unset means as `fetched_slowdown`."""

    def dataclass_kwargs(self) -> dict:
        kwargs = super().dataclass_kwargs()
        kwargs["transfer_slowdown"] = kwargs["transfer_slowdown"] or 0.0
        kwargs["fetched_slowdown"] = kwargs["fetched_slowdown"] or 0.0
        return kwargs


class LinkFields(_Cited):
    bandwidth_Bps: Positive
    latency_s: NonNegative
    copy_engines: int = Field(default=1, ge=1)
    """Transfers that may be in set-up at once (for NVMe: reads in flight, the queue depth the runtime keeps)."""
    pageable_bandwidth_Bps: Positive | None = None
    """Bandwidth from pageable (not pinned) host memory, where it differs."""
    preempt_prefetch: bool = False
    issue_s: NonNegative | None = None
    """Compute-stream time to issue one transfer (a cudaMemcpyAsync call, an io_submit); unset means 0."""
    sharing: Literal["serial", "shared"] = "serial"
    """Whether transfers issued together go one after another or share the bandwidth (`LinkSpec.sharing`)."""
    duplex_bandwidth_Bps: Positive | None = None
    """Bandwidth while the opposite direction also carries data (`LinkSpec.duplex_bandwidth_Bps`); unset: full
    duplex."""

    @model_validator(mode="after")
    def _preemption_needs_a_serial_wire(self):
        if self.preempt_prefetch and self.sharing == "shared":
            raise PydanticCustomError("preempt_shared", "preempt_prefetch: true is modelled on a serial wire only "
                                      "(sharing: serial)")
        if self.duplex_bandwidth_Bps is not None and self.duplex_bandwidth_Bps > self.bandwidth_Bps:
            raise PydanticCustomError("duplex_faster", "duplex_bandwidth_Bps {duplex} exceeds bandwidth_Bps {simplex}: "
                                      "a direction is never faster while the other also carries data",
                                      {"duplex": self.duplex_bandwidth_Bps, "simplex": self.bandwidth_Bps})
        return self

    def dataclass_kwargs(self) -> dict:
        kwargs = super().dataclass_kwargs()
        if kwargs["issue_s"] is None:
            kwargs["issue_s"] = 0.0
        return kwargs


class CPUFields(_Cited):
    name: str = Field(min_length=1)
    memory_bandwidth_Bps: Positive
    flops: Positive
    threads: int | None = Field(default=None, gt=0)
    """Hardware threads the runtime uses for expert compute; unset means not given (`CPUSpec.threads` 0)."""
    sockets: int | None = Field(default=None, gt=0)
    """CPU sockets; unset means 1. With more than one, the `sources` entry for memory_bandwidth_Bps says whether it
    is one socket's or all sockets' bandwidth (NUMA)."""

    def dataclass_kwargs(self) -> dict:
        kwargs = super().dataclass_kwargs()
        kwargs["threads"] = kwargs["threads"] or 0
        kwargs["sockets"] = kwargs["sockets"] or 1
        return kwargs


class ProfileFile(BaseModel):
    """The whole YAML document (mirrors `HardwareProfile`)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    description: str = ""
    gpu: GPUFields
    h2d: LinkFields
    d2h: LinkFields
    cpu: CPUFields
    nvme: LinkFields | None = None
    """NVMe reads into DRAM (for experts whose home is NVMe)."""
    gds: LinkFields | None = None
    """GPUDirect Storage: NVMe reads straight into GPU memory, where the platform has it."""

    def to_profile(self) -> HardwareProfile:
        return HardwareProfile(
            name=self.name,
            gpu=GPUSpec(**self.gpu.dataclass_kwargs()),
            h2d=LinkSpec(**self.h2d.dataclass_kwargs()),
            d2h=LinkSpec(**self.d2h.dataclass_kwargs()),
            cpu=CPUSpec(**self.cpu.dataclass_kwargs()),
            nvme=LinkSpec(**self.nvme.dataclass_kwargs()) if self.nvme else None,
            gds=LinkSpec(**self.gds.dataclass_kwargs()) if self.gds else None,
            description=self.description,
        )


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `25e9` and `15e-6` as floats (YAML 1.2) rather than strings (PyYAML's YAML 1.1)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_path(name_or_path: str) -> tuple[Path, str]:
    """The file a profile name or path means, and how to show it in messages; InputError for an unknown name."""
    text = str(name_or_path)
    if "/" in text or "\\" in text or text.endswith((".yaml", ".yml")):
        return Path(text), text
    if text in list_profiles():
        return PROFILE_DIR / f"{text}.yaml", f"hardware_profiles/{text}.yaml"
    raise InputError(f"unknown hardware profile '{text}'; known: {', '.join(list_profiles())} (or give a .yaml path)")


def load_profile(name_or_path: str) -> HardwareProfile:
    """Load and validate a hardware profile.

    Args:
        name_or_path: a shipped profile's name (`rtx4090_pcie4`), or a path to a YAML file: anything containing a
            path separator or ending in `.yaml`/`.yml`.

    Returns:
        The profile as a `HardwareProfile`.

    Raises:
        InputError: one line naming the file, the field and the value; for an unknown name, the known names.
    """
    path, shown = profile_path(name_or_path)
    try:
        stat = path.stat()
    except OSError:
        stat = None  # _read_yaml says why, in one line
    return _load(path, shown, stat and (stat.st_ino, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=64)
def _load(path: Path, shown: str, stamp: tuple | None) -> HardwareProfile:
    """`load_profile` of one version of a file (`stamp`): a sweep's jobs in one process parse and validate it once
    (a profile is frozen)."""
    data = _read_yaml(path, shown)
    if not isinstance(data, dict):
        raise InputError(f"{shown}: expected a mapping of profile fields at the top level, got {type(data).__name__}")
    try:
        return ProfileFile.model_validate(data).to_profile()
    except ValidationError as err:
        raise InputError(f"{shown}: {one_line(err)}") from None


def _read_yaml(path: Path, shown: str):
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except FileNotFoundError:
        raise InputError(f"{shown}: no such profile file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{shown}: unreadable ({type(err).__name__}: {err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
        raise InputError(f"{shown}: not valid YAML: {problem}{where}") from None
