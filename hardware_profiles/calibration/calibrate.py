"""`moe-calibrate`: measure the machine it runs on and write a hardware profile that `moe-sim hardware=FILE` uses.

Always measured: DRAM copy bandwidth, storage reads with the page cache defeated (`storage_bench`), the CPU expert
FFN at batch 1 over several widths (memory bandwidth and per-call overhead) and at a batch (FLOP rate)
(`cpu_bench`). With CUDA (PyTorch sees a GPU): host<->device copies pinned and pageable over 64 KiB ... 1 GiB, device
memory bandwidth, and the GPU expert FFN (`cuda_bench`). Each sized path is fitted to latency + bytes / bandwidth
(`fit`), the model the simulator's links use.

The profile cites every number as "measured by moe-calibrate on <host> <date>, <method>". The schema requires a GPU
and its links; without CUDA those sections are copied from a shipped profile (`--gpu-from`) and every one of their
citations starts with "PLACEHOLDER", naming the profile they came from. The storage path has no section in the
schema yet: its fit is written as a comment block (and into an `nvme` section once the schema has one).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml
from tqdm import tqdm

from hardware_profiles.calibration import cpu_bench, cuda_bench, storage_bench
from hardware_profiles.calibration.document import citation, profile_document, write_profile
from hardware_profiles.calibration.fit import MeasurementError, PathMeasurement
from hardware_profiles.schema import PROFILE_DIR, LinkFields, ProfileFile, _Loader, load_profile
from simulator.errors import InputError
from simulator.presets import PRESETS, get_preset

KiB, MiB = 1 << 10, 1 << 20
STORAGE_SIZES = tuple(64 * KiB * 4**i for i in range(6))  # 64 KiB ... 64 MiB
QUICK_STORAGE_SIZES = STORAGE_SIZES[:4]  # ... 4 MiB


@dataclass(frozen=True)
class Effort:
    """How much to measure: repeats and sizes. `quick` keeps a whole calibration under ~20 s (tests)."""

    storage_sizes: tuple[int, ...]
    storage_repeats: int
    ffn_widths: int
    ffn_repeats: int
    dram_bytes: int
    dram_repeats: int
    flops_tokens: int
    flops_repeats: int
    transfer_sizes: tuple[int, ...]
    transfer_repeats: int

    @classmethod
    def of(cls, quick: bool) -> "Effort":
        if quick:
            return cls(QUICK_STORAGE_SIZES, 6, 3, 2, 64 * MiB, 3, 64, 2, cuda_bench.QUICK_TRANSFER_SIZES, 3)
        return cls(STORAGE_SIZES, 16, 6, 8, 256 * MiB, 10, 256, 5, cuda_bench.TRANSFER_SIZES, 10)


@dataclass
class CudaCalibration:
    name: str
    memory_bytes: int
    h2d_pinned: PathMeasurement
    h2d_pageable: PathMeasurement
    d2h_pinned: PathMeasurement
    d2h_pageable: PathMeasurement
    device_copy_Bps: float
    ffn: PathMeasurement
    flops: float
    flops_tokens: int


@dataclass
class Calibration:
    host: str
    day: str
    cpu_name: str
    threads: int
    dram_copy_Bps: float
    dram_copy_all: list[float]
    storage: PathMeasurement
    storage_bursts: tuple[PathMeasurement, float] | None
    """Reads in flight (`StorageProbe.bursts`): their fit and when the first of a full burst completes; None
    where O_DIRECT AIO is unavailable."""
    cpu_ffn: PathMeasurement
    cpu_flops: float
    cpu_flops_all: list[float]
    flops_tokens: int
    cuda: CudaCalibration | None

    @property
    def citation(self) -> str:
        return citation("moe-calibrate", self.host, self.day)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def measure(hidden: int, ffn: int, effort: Effort, storage_dir: str, threads: int, with_cuda: bool,
            progress: tqdm | None = None) -> Calibration:
    """Run every measurement (CUDA ones only if `with_cuda`) for experts of `hidden` × `ffn`."""
    tick = progress.update if progress is not None else None
    widths = cpu_bench.ffn_widths(ffn, effort.ffn_widths)
    dram, dram_all = cpu_bench.dram_copy_Bps(effort.dram_bytes, effort.dram_repeats)
    if tick:
        tick()
    with storage_bench.StorageProbe(storage_dir, effort.storage_sizes) as probe:
        storage = probe.measure(effort.storage_repeats, tick)
        bursts = probe.bursts(effort.storage_repeats)
    cpu_ffn = cpu_bench.time_cpu_ffn(hidden, widths, effort.ffn_repeats, threads, tick=tick)
    flops, flops_all = cpu_bench.cpu_flops(hidden, ffn, effort.flops_tokens, effort.flops_repeats, threads)
    if tick:
        tick()
    cuda = measure_cuda(hidden, widths, effort, tick) if with_cuda else None
    return Calibration(socket.gethostname(), date.today().isoformat(), cpu_name(), threads, dram, dram_all, storage,
                       bursts, cpu_ffn, flops, flops_all, effort.flops_tokens, cuda)


def measure_cuda(hidden: int, widths: list[int], effort: Effort, tick) -> CudaCalibration:
    sizes, repeats = effort.transfer_sizes, effort.transfer_repeats
    paths = {(d, p): cuda_bench.time_transfers(d, p, sizes, repeats, tick) for d in ("h2d", "d2h") for p in (True, False)}
    device_copy = cuda_bench.device_copy_Bps(max(sizes), effort.dram_repeats)
    ffn = cuda_bench.time_gpu_ffn(hidden, widths, effort.ffn_repeats, tick=tick)
    tokens = 4096
    flops = cuda_bench.gpu_flops(hidden, widths[-1], tokens, effort.flops_repeats)
    name, memory = cuda_bench.gpu_identity()
    return CudaCalibration(name, memory, paths["h2d", True], paths["h2d", False], paths["d2h", True],
                           paths["d2h", False], device_copy, ffn, flops, tokens)


def ticks(effort: Effort, with_cuda: bool) -> int:
    """Progress-bar steps `measure` takes."""
    n = 2 + len(effort.storage_sizes) + effort.ffn_widths
    return n + (4 * len(effort.transfer_sizes) + effort.ffn_widths if with_cuda else 0)


# -- the profile ---------------------------------------------------------------------------------------------------


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB/s"


def _fit_text(m: PathMeasurement) -> str:
    return (f"least-squares fit of latency + bytes/bandwidth to {m.fit.points} sizes "
            f"({_size(m.nbytes[0])}..{_size(m.nbytes[-1])}), max fit error {m.fit.max_relative_error:.0%}, "
            f"spread (std/mean) up to {max(m.cv):.0%}")


def shipped_sections(name: str) -> dict:
    """The raw YAML mapping of the shipped profile `name` (values and citations), validated."""
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise InputError(f"--gpu-from: unknown shipped profile {name!r}")
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    ProfileFile.model_validate(data)
    return data


def placeholder(section: dict, origin: str) -> dict:
    """A shipped profile's section whose every citation is marked as a placeholder copied from `origin`."""
    out = {k: v for k, v in section.items() if k not in ("source", "sources")}
    prefix = f"PLACEHOLDER (no CUDA at calibration): copied from hardware_profiles/{origin}.yaml, which cites: "
    sources = {k: prefix + v for k, v in section.get("sources", {}).items()}
    if "source" in section:
        out["source"] = prefix + section["source"]
    out["sources"] = sources
    return out


def link_section(pinned: PathMeasurement, pageable: PathMeasurement, cite: str) -> dict:
    section = {
        "bandwidth_Bps": float(f"{pinned.fit.bandwidth_Bps:.4g}"),
        "latency_s": float(f"{pinned.fit.latency_s:.4g}"),
        "copy_engines": 1,
        "sources": {
            "bandwidth_Bps": f"{cite}, pinned host memory: {pinned.method}; {_fit_text(pinned)}. Pageable: "
                             f"{_gb(pageable.fit.bandwidth_Bps)}, latency {pageable.fit.latency_s * 1e6:.1f} us.",
            "latency_s": f"{cite}, pinned host memory: intercept of the same fit (includes launch and synchronisation).",
            "copy_engines": "Assumption: one copy at a time, as calibration times them.",
        },
    }
    if "pageable_bandwidth_Bps" in LinkFields.model_fields:
        section["pageable_bandwidth_Bps"] = float(f"{pageable.fit.bandwidth_Bps:.4g}")
        section["sources"]["pageable_bandwidth_Bps"] = f"{cite}, pageable host memory: {pageable.method}; {_fit_text(pageable)}."
    return section


def nvme_section(single: PathMeasurement, bursts: tuple[PathMeasurement, float] | None, cite: str) -> dict:
    """The storage read path: from the bursts of reads in flight where they were measured (the bandwidth a runtime
    keeping several reads in flight gets, and whether they complete one after another or together), else from
    single reads."""
    if bursts is None:
        return {
            "bandwidth_Bps": float(f"{single.fit.bandwidth_Bps:.4g}"),
            "latency_s": float(f"{single.fit.latency_s:.4g}"),
            "copy_engines": 1,
            "sources": {
                "bandwidth_Bps": f"{cite}, {single.method}; {_fit_text(single)}.",
                "latency_s": f"{cite}, intercept of the same fit (one whole-file read including open and close).",
                "copy_engines": "One read in flight: the queue depth calibration measured at (not the device's limit).",
            },
        }
    burst, first = bursts
    depth = max(burst.nbytes) // min(burst.nbytes)
    sharing, serial = storage_bench.nearer_wire(burst.fit, min(burst.nbytes), depth, first)
    return {
        "bandwidth_Bps": float(f"{burst.fit.bandwidth_Bps:.4g}"),
        "latency_s": float(f"{single.fit.latency_s:.4g}"),
        "copy_engines": depth,
        "sharing": sharing,
        "sources": {
            "bandwidth_Bps": f"{cite}, {burst.method}; {_fit_text(burst)} (inverse slope). One read at a time: "
                             f"{single.method}; {_fit_text(single)}.",
            "latency_s": f"{cite}, intercept of the one-read-at-a-time fit (its sizes start at 64 KiB, where the fixed "
                         f"cost shows; the bursts' {_size(min(burst.nbytes))} reads leave it unmeasurable).",
            "copy_engines": f"{cite}: the deepest burst measured ({depth} reads in flight, not the device's limit).",
            "sharing": f"{cite}: in the bursts of {depth}, the first read was seen complete at {first:.0%} of the "
                       f"burst's time (mean); a serial wire would give {serial:.0%} by the fit, a shared one 100%: "
                       f"{sharing} is nearer.",
        },
    }


def calibration_document(cal: Calibration, name: str, gpu_from: str) -> tuple[dict, list[str]]:
    """The calibration as a profile document (`document.profile_document`), and the comment lines that go above it
    (placeholders, storage)."""
    cite = cal.citation
    cpu = {
        "name": f"{cal.cpu_name} ({os.cpu_count()} logical CPUs)",
        "memory_bandwidth_Bps": float(f"{cal.cpu_ffn.fit.bandwidth_Bps:.4g}"),
        "flops": float(f"{cal.cpu_flops:.4g}"),
        "sources": {
            "memory_bandwidth_Bps": f"{cite}, inverse slope of the CPU expert FFN time against weight bytes: "
                                    f"{cal.cpu_ffn.method}; {_fit_text(cal.cpu_ffn)}. For comparison, numpy DRAM copy "
                                    f"(read + write bytes) best of {len(cal.dram_copy_all)}: {_gb(cal.dram_copy_Bps)}.",
            "flops": f"{cite}, one float32 expert FFN (widest width) on {cal.flops_tokens} tokens, "
                     f"{cal.threads} BLAS thread(s), best of {len(cal.cpu_flops_all)}.",
        },
    }
    nvme = nvme_section(cal.storage, cal.storage_bursts, cite)
    comments = []
    if cal.cuda is not None:
        g = cal.cuda
        gpu = {
            "name": g.name,
            "memory_bytes": g.memory_bytes,
            "memory_bandwidth_Bps": float(f"{g.ffn.fit.bandwidth_Bps:.4g}"),
            "flops": float(f"{g.flops:.4g}"),
            "kernel_overhead_s": float(f"{g.ffn.fit.latency_s:.4g}"),
            "sources": {
                "memory_bytes": f"{cite}, torch.cuda.get_device_properties(0).total_memory.",
                "memory_bandwidth_Bps": f"{cite}, inverse slope of the GPU expert FFN time against weight bytes: "
                                        f"{g.ffn.method}; {_fit_text(g.ffn)}. Device-to-device copy (read + write): "
                                        f"{_gb(g.device_copy_Bps)}.",
                "flops": f"{cite}, one bf16 expert FFN on {g.flops_tokens} tokens, best of several.",
                "kernel_overhead_s": f"{cite}, intercept of the GPU expert FFN fit.",
            },
        }
        h2d = link_section(g.h2d_pinned, g.h2d_pageable, cite)
        d2h = link_section(g.d2h_pinned, g.d2h_pageable, cite)
        description = f"{g.name} on {cal.host}, measured by moe-calibrate {cal.day}."
    else:
        shipped = shipped_sections(gpu_from)
        gpu, h2d, d2h = (placeholder(shipped[s], gpu_from) for s in ("gpu", "h2d", "d2h"))
        description = (f"CPU and storage of {cal.host} measured by moe-calibrate {cal.day}; no CUDA there, so the "
                       f"gpu, h2d and d2h sections are PLACEHOLDERS copied from {gpu_from}.")
        comments.append(f"gpu, h2d, d2h: PLACEHOLDERS from hardware_profiles/{gpu_from}.yaml (no CUDA on {cal.host}).")
    doc, storage_comments = profile_document(name, description, gpu=gpu, h2d=h2d, d2h=d2h, cpu=cpu, nvme=nvme)
    return doc, comments + storage_comments


# -- the table -----------------------------------------------------------------------------------------------------


def table(cal: Calibration) -> str:
    """The calibration as a fixed-width table: one row per fitted path, then the single figures."""
    paths = [cal.storage, *([cal.storage_bursts[0]] if cal.storage_bursts else []), cal.cpu_ffn]
    if cal.cuda is not None:
        g = cal.cuda
        paths += [g.h2d_pinned, g.h2d_pageable, g.d2h_pinned, g.d2h_pageable, g.ffn]
    lines = [f"{'path':<18} {'sizes':>16} {'latency':>11} {'bandwidth':>12} {'fit err':>8} {'spread':>7}"]
    for m in paths:
        sizes = f"{_size(m.nbytes[0])}..{_size(m.nbytes[-1])}"
        lines.append(f"{m.path:<18} {sizes:>16} {m.fit.latency_s * 1e6:>8.1f} us {m.fit.bandwidth_Bps / 1e9:>7.2f} GB/s "
                     f"{m.fit.max_relative_error:>7.1%} {max(m.cv):>7.1%}")
    if cal.storage_bursts:
        lines.append(f"{'first of a burst':<18} {'':>16} {'':>11} {cal.storage_bursts[1]:>11.0%}  of the burst's time")
    lines.append(f"{'DRAM copy':<18} {'best of ' + str(len(cal.dram_copy_all)):>16} {'':>11} {_gb(cal.dram_copy_Bps):>12}")
    lines.append(f"{'CPU FFN FLOP/s':<18} {str(cal.flops_tokens) + ' tokens':>16} {'':>11} {cal.cpu_flops / 1e9:>7.1f} GFLOP/s")
    if cal.cuda is not None:
        lines.append(f"{'GPU device copy':<18} {'':>16} {'':>11} {_gb(cal.cuda.device_copy_Bps):>12}")
        lines.append(f"{'GPU FFN FLOP/s':<18} {str(cal.cuda.flops_tokens) + ' tokens':>16} {'':>11} {cal.cuda.flops / 1e12:>7.1f} TFLOP/s")
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= MiB else f"{n >> 10} KiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moe-calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="profile to write (FILE.yaml)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats: under ~20 s")
    parser.add_argument("--gpu-from", default="rtx4090_pcie4",
                        help="shipped profile whose gpu/h2d/d2h sections stand in when there is no CUDA (default rtx4090_pcie4)")
    parser.add_argument("--model", default="deepseek-v2-lite", choices=sorted(PRESETS),
                        help="preset whose expert shape (hidden, expert FFN width) is timed")
    parser.add_argument("--storage-dir", default=tempfile.gettempdir(),
                        help="a folder on the storage device to measure (scratch files, removed after)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS threads for the CPU FFN")
    parser.add_argument("--name", help="profile name (default: the file's stem)")
    args = parser.parse_args(argv)
    try:
        model = get_preset(args.model)
        effort = Effort.of(args.quick)
        with_cuda = cuda_bench.cuda_available()
        if not with_cuda:
            print(f"moe-calibrate: no CUDA device (torch.cuda.is_available() is false or torch is missing): measuring "
                  f"CPU and storage only; gpu/h2d/d2h are placeholders from {args.gpu_from}")
        shipped_sections(args.gpu_from)  # fail before measuring, not after
        with tqdm(total=ticks(effort, with_cuda), desc="calibrate", unit="step", disable=None, leave=False) as bar:
            cal = measure(model.hidden_size, model.expert_intermediate_size, effort, args.storage_dir, args.threads,
                          with_cuda, bar)
        doc, comments = calibration_document(cal, args.name or Path(args.out).stem, args.gpu_from)
        write_profile(args.out, doc, ["Written by moe-calibrate.", *comments])
        load_profile(args.out)
    except (InputError, MeasurementError) as err:
        print(f"moe-calibrate: {err}", file=sys.stderr)
        sys.exit(2)
    print(table(cal))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
