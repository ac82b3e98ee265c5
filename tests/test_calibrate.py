"""moe-calibrate: the latency/bandwidth fit on synthetic points, uncached and asynchronous reads, the CUDA path's
bookkeeping without a GPU, and a quick calibration of this machine whose profile moe-sim runs on."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from hardware_profiles.calibration import calibrate, cuda_bench
from hardware_profiles.calibration.aio import AsyncReader, aio_available
from hardware_profiles.calibration.fit import PathMeasurement, fit_latency_bandwidth
from hardware_profiles.schema import ProfileFile, load_profile
from hardware_profiles.calibration.uncached_read import ALIGN, FADVISE, O_DIRECT, PLAIN, UncachedReader, aligned_buffer, write_padded

SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30]


def test_fit_recovers_latency_and_bandwidth_from_exact_points():
    times = [15e-6 + n / 25.6e9 for n in SIZES]
    fit = fit_latency_bandwidth(SIZES, times)
    assert fit.latency_s == pytest.approx(15e-6, rel=1e-9)
    assert fit.bandwidth_Bps == pytest.approx(25.6e9, rel=1e-9)
    assert fit.max_relative_error < 1e-9
    assert fit.seconds(1 << 20) == pytest.approx(15e-6 + (1 << 20) / 25.6e9)


def test_fit_recovers_them_from_noisy_points():
    rng = np.random.default_rng(0)
    sizes = np.repeat(SIZES, 20)
    times = (40e-6 + sizes / 7.0e9) * rng.normal(1.0, 0.02, len(sizes))
    fit = fit_latency_bandwidth(sizes, times)
    assert fit.latency_s == pytest.approx(40e-6, rel=0.05)
    assert fit.bandwidth_Bps == pytest.approx(7.0e9, rel=0.02)


def test_fit_clamps_a_negative_latency_to_zero():
    sizes = [1e6, 2e6, 4e6]
    fit = fit_latency_bandwidth(sizes, [n / 1e9 - 1e-5 for n in sizes])
    assert fit.latency_s == 0.0
    assert fit.bandwidth_Bps == pytest.approx(1.0e9, rel=0.02)


@pytest.mark.parametrize("sizes, times", [([1e6], [1e-3]), ([1e6, 2e6], [2e-3, 1e-3]), ([1e6, 2e6], [0.0, 1e-3])])
def test_fit_rejects_points_that_give_no_bandwidth(sizes, times):
    with pytest.raises(ValueError):
        fit_latency_bandwidth(sizes, times)


def test_path_measurement_fits_the_means_and_reports_spread():
    m = PathMeasurement.from_samples("p", "m", {1000: [2e-6, 4e-6], 3000: [5e-6, 5e-6]})
    assert m.nbytes == (1000, 3000) and m.mean_s == pytest.approx((3e-6, 5e-6))
    assert m.cv[0] == pytest.approx(1 / 3) and m.cv[1] == 0.0
    assert m.fit.latency_s == pytest.approx(2e-6) and m.fit.bandwidth_Bps == pytest.approx(1e9)


def test_cuda_transfer_bookkeeping_recovers_a_known_link_without_a_gpu():
    """The CUDA path's timing loop and fit, driven by a fake copy of known latency and bandwidth."""
    calls = []

    def fake_copy(nbytes: int) -> float:
        calls.append(nbytes)
        return 12e-6 + nbytes / 24e9

    samples = cuda_bench.transfer_samples(fake_copy, cuda_bench.TRANSFER_SIZES, repeats=3)
    m = PathMeasurement.from_samples("h2d pinned", "fake", samples)
    assert calls.count(64 << 10) == 4  # one warm-up, three timed
    assert m.nbytes[0] == 64 << 10 and m.nbytes[-1] == 1 << 30
    assert m.fit.latency_s == pytest.approx(12e-6, rel=1e-6)
    assert m.fit.bandwidth_Bps == pytest.approx(24e9, rel=1e-6)


def test_link_section_cites_pinned_and_pageable():
    pinned = PathMeasurement.from_samples("h2d pinned", "m1", {s: [10e-6 + s / 25e9] for s in SIZES})
    pageable = PathMeasurement.from_samples("h2d pageable", "m2", {s: [20e-6 + s / 9e9] for s in SIZES})
    section = calibrate.link_section(pinned, pageable, "measured by moe-calibrate on h 2026-01-01")
    assert section["bandwidth_Bps"] == pytest.approx(25e9, rel=1e-3)
    assert section["latency_s"] == pytest.approx(10e-6, rel=1e-3)
    assert all(v.startswith("measured by moe-calibrate on h") or v.startswith("Assumption") for v in section["sources"].values())


def test_uncached_reader_reads_back_what_was_written(tmp_path):
    data = np.arange(3 * ALIGN // 4 + 5, dtype=np.float32).tobytes()
    write_padded(tmp_path / "f.bin", data)
    assert (tmp_path / "f.bin").stat().st_size % ALIGN == 0
    reader = UncachedReader(tmp_path)
    assert reader.method in (O_DIRECT, FADVISE, PLAIN)
    buffer = aligned_buffer(len(data))
    reader.read_into(tmp_path / "f.bin", buffer, len(data))
    assert buffer[: len(data)] == data


@pytest.mark.skipif(not aio_available(), reason="Linux native AIO needs Linux on x86-64 or arm64")
def test_async_reads_land_whole_and_in_their_buffers(tmp_path):
    if UncachedReader(tmp_path).method != O_DIRECT:
        pytest.skip("this file system refuses O_DIRECT")
    blocks = [np.full(2 * ALIGN, i, dtype=np.uint8).tobytes() for i in range(5)]
    for i, b in enumerate(blocks):
        write_padded(tmp_path / f"{i}.bin", b)
    buffers = [aligned_buffer(2 * ALIGN) for _ in blocks]
    with AsyncReader() as reader:
        tickets = reader.submit([(tmp_path / f"{i}.bin", buffers[i], 2 * ALIGN) for i in range(5)])
        for t in reversed(tickets):
            reader.wait(t)
    assert [bytes(b[: 2 * ALIGN]) for b in buffers] == blocks


@pytest.fixture(scope="module")
def quick_profile(tmp_path_factory) -> tuple[Path, str]:
    """A --quick calibration of this machine (its printed output beside it)."""
    where = tmp_path_factory.mktemp("calibrate")
    out = where / "this_machine.yaml"
    run = subprocess.run([sys.executable, "-c", "from hardware_profiles.calibration.calibrate import main; main()",
                          "--out", str(out), "--quick", "--storage-dir", str(where)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return out, run.stdout


def test_quick_calibration_writes_a_valid_cited_profile(quick_profile):
    path, stdout = quick_profile
    profile = load_profile(str(path))
    assert profile.name == "this_machine"
    assert profile.cpu.memory_bandwidth_Bps > 0 and profile.cpu.flops > 0
    doc = yaml.safe_load(path.read_text())
    ProfileFile.model_validate(doc)
    for field, text in doc["cpu"]["sources"].items():
        assert text.startswith("measured by moe-calibrate on "), field
    assert "storage read" in stdout and "cpu expert FFN" in stdout and "DRAM copy" in stdout
    storage_text = doc["nvme"]["sources"]["bandwidth_Bps"] if "nvme" in doc else path.read_text()
    assert any(m in storage_text for m in ("O_DIRECT", "posix_fadvise", "NOT defeated"))
    if "bursts of [1, 2, 4]" in storage_text:  # O_DIRECT AIO here: reads in flight were measured
        assert profile.nvme.copy_engines == 4 and profile.nvme.sharing in ("serial", "shared")
        assert "storage bursts" in stdout and "first of a burst" in stdout
    if not cuda_bench.cuda_available():
        assert stdout.startswith("moe-calibrate: no CUDA device")
        for section in ("gpu", "h2d", "d2h"):
            assert all(t.startswith("PLACEHOLDER") for t in doc[section]["sources"].values()), section


def test_moe_sim_runs_on_the_calibrated_profile(quick_profile, tmp_path):
    path, _ = quick_profile
    run = subprocess.run([sys.executable, "-c", "from experiments.app import main; main()", f"hardware={path}",
                          "replay.progress=false"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (metrics,) = tmp_path.glob("outputs/*/*/metrics.json")
    assert "time/token" in run.stdout and metrics.is_file()


def test_cuda_measurement_code_runs_on_the_cpu():
    """The GPU measurements' code, run on torch's CPU device: every call works and fits (the figures mean nothing
    here; pinned memory needs CUDA, so only pageable copies)."""
    pytest.importorskip("torch")
    # 64 KiB and 256 MiB: a copy 4096x longer, so no scheduling hiccup on a loaded machine can invert the slope
    sizes = (cuda_bench.TRANSFER_SIZES[0], cuda_bench.TRANSFER_SIZES[-2])
    for direction in ("h2d", "d2h"):
        m = cuda_bench.time_transfers(direction, False, sizes, repeats=2, device="cpu")
        assert m.nbytes == tuple(sizes) and m.fit.bandwidth_Bps > 0 and m.path == f"{direction} pageable"
    assert cuda_bench.device_copy_Bps(1 << 20, 2, device="cpu") > 0
    # widths 16 and 4096: 256x the weights, so that a loaded machine cannot invert the slope either
    ffn = cuda_bench.time_gpu_ffn(256, [16, 4096], repeats=2, pool_bytes=16 << 20, device="cpu")
    assert len(ffn.nbytes) == 2 and "on cpu" in ffn.method
    assert cuda_bench.gpu_flops(256, 128, 16, 2, device="cpu") > 0


@pytest.mark.skipif(not cuda_bench.cuda_available(), reason="no CUDA device")
def test_cuda_measurements_on_the_gpu():
    sizes = cuda_bench.QUICK_TRANSFER_SIZES
    for direction in ("h2d", "d2h"):
        for pinned in (True, False):
            m = cuda_bench.time_transfers(direction, pinned, sizes, repeats=3)
            assert m.fit.bandwidth_Bps > 1e8 and m.fit.latency_s >= 0
    assert cuda_bench.device_copy_Bps(64 << 20, 3) > 1e10
    ffn = cuda_bench.time_gpu_ffn(2048, [352, 704, 1408], repeats=2, pool_bytes=64 << 20)
    assert ffn.fit.bandwidth_Bps > 1e10
    assert cuda_bench.gpu_flops(2048, 1408, 1024, 2) > 1e12
    name, memory = cuda_bench.gpu_identity()
    assert name and memory > 1 << 30


def test_nvme_section_takes_reads_in_flight_and_the_nearer_wire_model():
    from hardware_profiles.calibration.fit import PathMeasurement

    mib = 1 << 20
    single = PathMeasurement.from_samples("storage read", "one at a time", {s: [50e-6 + s / 4e9] for s in (mib, 16 * mib)})
    burst = PathMeasurement.from_samples("storage bursts", "bursts", {k * 4 * mib: [k * 4 * mib / 3e9] for k in (1, 2, 4)})
    alone = calibrate.nvme_section(single, None, "cite")
    assert alone["copy_engines"] == 1 and "sharing" not in alone and alone["bandwidth_Bps"] == 4e9
    shared = calibrate.nvme_section(single, (burst, 0.99), "cite")
    assert shared["copy_engines"] == 4 and shared["sharing"] == "shared" and shared["bandwidth_Bps"] == 3e9
    assert shared["latency_s"] == float(f"{single.fit.latency_s:.4g}")
    assert calibrate.nvme_section(single, (burst, 0.3), "cite")["sharing"] == "serial"  # a serial wire: 25%


def test_timings_no_line_fits_are_one_line():
    from hardware_profiles.calibration.fit import MeasurementError

    with pytest.raises(MeasurementError) as info:
        PathMeasurement.from_samples("storage read", "made up", {1 << 10: [2e-3], 1 << 20: [1e-3]})
    message = str(info.value)
    assert "\n" not in message and message.startswith("storage read: time does not grow with size")
    assert "2000.0 us, 1000.0 us" in message and "measure again" in message
