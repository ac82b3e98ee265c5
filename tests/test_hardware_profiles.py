"""Hardware profiles: every shipped YAML loads, and every kind of bad file fails with one line naming file and field."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from hardware_profiles import list_profiles, load_profile
from hardware_profiles.schema import PROFILE_DIR
from simulator.errors import InputError
from simulator.hardware import HardwareProfile

EXPECTED = {"rtx4090_pcie4", "rtx3090_pcie4", "a100_80g_pcie4", "h100_pcie5", "h200_pcie5", "gh200_c2c",
            "rtx4070_laptop_pcie4x8", "jetson_agx_orin_64g", "jetson_orin_nano_super",
            "rtx4090_pcie4_nvme5", "h100_pcie5_nvme5", "h200_pcie5_nvme5", "gh200_c2c_nvme5"}
NEW_PROFILES = {"rtx_a5000_pcie4", "t4_pcie3", "quadro_rtx6000_pcie3", "l4_pcie4", "rtx4090_2x_xeon6454s",
                "rtx2080_pcie3_ddr4x4"}
"""Machines that published MoE-offloading figures ran on (MoE-Infinity/MoE-Gen, Colab, Fiddler, ktransformers, llama.cpp)."""
UNIFIED_MEMORY = {"jetson_agx_orin_64g", "jetson_orin_nano_super"}
"""Edge devices whose CPU and GPU share one memory: h2d/d2h are modelled as that memory."""
DATA_CENTRE = {"a100_80g_pcie4", "a100_80g_sxm4", "h100_pcie5", "h200_pcie5", "gh200_c2c"}
GEN5_SUFFIX = "_nvme5"
"""`<base>_nvme5` is `<base>` with a Gen5 NVMe drive in place of the Gen4 one, and nothing else changed."""


@pytest.mark.parametrize("name", list_profiles())
def test_shipped_profile_loads(name):
    profile = load_profile(name)
    assert isinstance(profile, HardwareProfile)
    assert profile.name == name
    assert profile.description
    for section in (profile.gpu, profile.h2d, profile.d2h, profile.cpu, profile.nvme, profile.gds):
        if section is None:
            continue
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert value >= 0, f"{name}: {f.name}"


def test_every_shipped_number_has_its_own_citation():
    for name in list_profiles():
        doc = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        sections = [key for key, value in doc.items() if isinstance(value, dict)]
        assert {"gpu", "h2d", "d2h", "cpu", "nvme"} <= set(sections) <= {"gpu", "h2d", "d2h", "cpu", "nvme", "gds"}, name
        for section in sections:
            numbers = {k for k in doc[section] if k not in ("name", "source", "sources")}
            assert numbers <= set(doc[section]["sources"]), f"{name}.{section}"
            assert all(str(text).strip() for text in doc[section]["sources"].values()), f"{name}.{section}"


def test_expected_profiles_are_shipped():
    assert EXPECTED | NEW_PROFILES <= set(list_profiles())


@pytest.mark.parametrize("name", sorted(NEW_PROFILES))
def test_new_profile_loads_and_cites_every_number(name):
    profile = load_profile(name)
    assert profile.name == name and profile.description
    doc = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    for section in ("gpu", "h2d", "d2h", "cpu", "nvme"):
        numbers = {k for k, v in doc[section].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers and numbers <= set(doc[section]["sources"]), f"{name}.{section}"


def test_cpu_threads_and_sockets_default_when_not_given():
    """Profiles written before the fields existed load unchanged: 0 threads (not given), 1 socket."""
    cpu = load_profile("rtx4090_pcie4").cpu
    assert (cpu.threads, cpu.sockets) == (0, 1)


def test_ktransformers_machine_is_two_sockets_with_one_sockets_bandwidth():
    profile = load_profile("rtx4090_2x_xeon6454s")
    assert (profile.cpu.sockets, profile.cpu.threads) == (2, 65)
    assert profile.cpu.memory_bandwidth_Bps == 307.2e9  # one socket's 8 x DDR5-4800, not both
    doc = yaml.safe_load((PROFILE_DIR / "rtx4090_2x_xeon6454s.yaml").read_text(encoding="utf-8"))
    assert "ONE socket" in doc["cpu"]["sources"]["memory_bandwidth_Bps"]


def test_multi_socket_profiles_say_whose_bandwidth_it_is():
    for name in list_profiles():
        doc = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        if doc["cpu"].get("sockets", 1) > 1:
            assert "socket" in doc["cpu"]["sources"]["memory_bandwidth_Bps"].lower(), name


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("sockets", 0, "cpu.sockets: Input should be greater than 0 (got 0)"),
        ("sockets", -2, "cpu.sockets: Input should be greater than 0 (got -2)"),
        ("threads", 0, "cpu.threads: Input should be greater than 0 (got 0)"),
        ("threads", 2.5, "cpu.threads: Input should be a valid integer"),
        ("threads", "many", "cpu.threads: Input should be a valid integer"),
        ("sockets", True, "cpu.sockets: expected a number, got a boolean (got True)"),
    ],
)
def test_bad_threads_or_sockets_name_file_field_and_value(tmp_path, field, value, expected):
    def mutate(d):
        d["cpu"][field] = value
        d["cpu"]["sources"][field] = "Assumption: a test value."

    path = _write(tmp_path, mutate)
    assert expected in _error(path)


def test_threads_and_sockets_need_a_citation(tmp_path):
    path = _write(tmp_path, lambda d: d["cpu"].update(threads=16, sockets=2))
    assert "cpu: no source for ['threads', 'sockets']" in _error(path)


def test_library_has_at_least_eight_distinct_machines():
    """Machines, not files: a Gen5 variant is the same machine with another drive."""
    bases = [name for name in list_profiles() if not name.endswith(GEN5_SUFFIX)]
    machines = {load_profile(name).gpu.name for name in bases}
    assert len(machines) == len(bases) >= 8, sorted(machines)


@pytest.mark.parametrize("name", list_profiles())
def test_every_profile_has_an_nvme_tier(name):
    profile = load_profile(name)
    assert profile.nvme is not None
    assert profile.nvme.bandwidth_Bps > 0 and profile.nvme.latency_s > 0 and profile.nvme.copy_engines >= 1
    # NVMe is the slow tier: slower than DRAM-to-GPU, and one drive is no faster than 16 GB/s (Gen5 x4 is 15.75).
    assert profile.nvme.bandwidth_Bps < profile.h2d.bandwidth_Bps
    assert profile.nvme.bandwidth_Bps < 16e9


@pytest.mark.parametrize("name", list_profiles())
def test_gds_only_on_data_centre_machines_and_no_faster_than_the_drive(name):
    profile = load_profile(name)
    base = name.removesuffix(GEN5_SUFFIX)
    assert (profile.gds is not None) == (base in DATA_CENTRE)
    if profile.gds is not None:
        assert profile.gds.bandwidth_Bps <= profile.nvme.bandwidth_Bps  # one drive: GDS cannot outrun it


@pytest.mark.parametrize("name", list_profiles())
def test_pageable_bandwidth_below_pinned(name):
    profile = load_profile(name)
    for link in (profile.h2d, profile.d2h):
        if link.pageable_bandwidth_Bps is not None:
            assert link.pageable_bandwidth_Bps < link.bandwidth_Bps


def test_gen5_variants_exist_for_a_consumer_and_a_data_centre_machine():
    variants = {name for name in list_profiles() if name.endswith(GEN5_SUFFIX)}
    assert {"rtx4090_pcie4_nvme5", "h100_pcie5_nvme5"} <= variants


@pytest.mark.parametrize("name", [n for n in list_profiles() if n.endswith(GEN5_SUFFIX)])
def test_gen5_variant_is_its_base_with_a_faster_drive(name):
    base_name = name.removesuffix(GEN5_SUFFIX)
    assert base_name in list_profiles()
    variant, base = load_profile(name), load_profile(base_name)
    assert variant.nvme.bandwidth_Bps > base.nvme.bandwidth_Bps
    assert (variant.gds is None) == (base.gds is None)
    if base.gds is not None:
        assert variant.gds.bandwidth_Bps > base.gds.bandwidth_Bps
    assert (variant.gpu, variant.h2d, variant.d2h, variant.cpu) == (base.gpu, base.h2d, base.d2h, base.cpu)
    docs = [yaml.safe_load((PROFILE_DIR / f"{n}.yaml").read_text(encoding="utf-8")) for n in (name, base_name)]
    for section in ("gpu", "h2d", "d2h", "cpu"):
        assert docs[0][section] == docs[1][section], f"{name}.{section}: citations drifted from {base_name}"


@pytest.mark.parametrize("name", sorted(UNIFIED_MEMORY))
def test_unified_memory_links_are_the_memory_itself(name):
    profile = load_profile(name)
    memory = profile.gpu.memory_bandwidth_Bps
    assert profile.cpu.memory_bandwidth_Bps == memory
    for link in (profile.h2d, profile.d2h):
        assert link.bandwidth_Bps == memory and link.latency_s <= 1e-6
    assert profile.gds is None  # an NVMe read into DRAM already lands in the GPU's memory


def test_load_by_path_equals_load_by_name(tmp_path):
    path = PROFILE_DIR / "rtx4090_pcie4.yaml"
    assert load_profile(str(path)) == load_profile("rtx4090_pcie4")
    copy = tmp_path / "mine.yml"
    copy.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_profile(str(copy)) == load_profile("rtx4090_pcie4")


def test_exponent_without_dot_is_a_number(tmp_path):
    """PyYAML alone reads `25e9` as a string; profiles are full of such numbers."""
    text = (PROFILE_DIR / "rtx4090_pcie4.yaml").read_text(encoding="utf-8")
    path = tmp_path / "plain_exponents.yaml"
    path.write_text(text.replace("25.6e+9", "25e9").replace("memory_bytes: 25_769_803_776", "memory_bytes: 24e9"))
    profile = load_profile(str(path))
    assert (profile.h2d.bandwidth_Bps, profile.gpu.memory_bytes) == (25e9, 24_000_000_000)


def _write(tmp_path, mutate, name="bad.yaml"):
    doc = yaml.safe_load((PROFILE_DIR / "rtx4090_pcie4.yaml").read_text(encoding="utf-8"))
    mutate(doc)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def _error(path) -> str:
    with pytest.raises(InputError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_negative_bandwidth(tmp_path):
    path = _write(tmp_path, lambda d: d["h2d"].update(bandwidth_Bps=-5.0))
    assert _error(path) == f"{path}: h2d.bandwidth_Bps: Input should be greater than 0 (got -5.0)"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["d2h"].update(copy_engines=0), "d2h.copy_engines: Input should be greater than or equal to 1 (got 0)"),
        (lambda d: d["h2d"].update(latency_s=-1e-6), "h2d.latency_s: Input should be greater than or equal to 0"),
        (lambda d: d["gpu"].update(memory_bytes=0), "gpu.memory_bytes: Input should be greater than 0 (got 0)"),
        (lambda d: d["gpu"].update(flops=".nan"), "gpu.flops:"),
        (lambda d: d["h2d"].update(copy_engines=True), "h2d.copy_engines: expected a number, got a boolean (got True)"),
        (lambda d: d["gpu"].update(hbm_stacks=5), "gpu.hbm_stacks: Extra inputs are not permitted (got 5)"),
        (lambda d: d.update(vendor="NVIDIA"), "vendor: Extra inputs are not permitted"),
        (lambda d: d["cpu"].pop("flops"), "cpu.flops: Field required"),
        (lambda d: d.pop("d2h"), "d2h: Field required"),
        (lambda d: d["cpu"]["sources"].pop("flops"), "cpu: no source for ['flops']"),
        (lambda d: d["gpu"]["sources"].update(tdp_W="spec"), "gpu.sources: cites unknown field(s) ['tdp_W']"),
    ],
)
def test_bad_field_names_file_field_and_value(tmp_path, mutate, expected):
    path = _write(tmp_path, mutate)
    assert expected in _error(path)


def test_one_section_source_covers_all_its_numbers(tmp_path):
    path = _write(tmp_path, lambda d: d["cpu"].update(sources={}, source="Assumption: a made-up host."))
    assert load_profile(str(path)).cpu.flops == load_profile("rtx4090_pcie4").cpu.flops


@pytest.mark.parametrize(
    "content, expected",
    [
        ("gpu: [unclosed\n", "not valid YAML"),
        ("gpu:\n  name: x\n\tflops: 1\n", "not valid YAML"),
        ("just some text\n", "expected a mapping of profile fields at the top level, got str"),
        ("", "got NoneType"),
    ],
)
def test_not_a_yaml_profile(tmp_path, content, expected):
    path = tmp_path / "notes.yaml"
    path.write_text(content)
    assert expected in _error(path)


def test_binary_file(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    assert "unreadable" in _error(path)


def test_missing_file(tmp_path):
    assert "no such profile file" in _error(tmp_path / "absent.yaml")


def test_unknown_name_lists_known_ones():
    with pytest.raises(InputError) as info:
        load_profile("rtx5090")
    message = str(info.value)
    assert "\n" not in message and "rtx5090" in message
    assert all(name in message for name in list_profiles())


def test_issue_time_defaults_to_zero_and_needs_a_citation_when_set(tmp_path):
    assert load_profile("rtx4090_pcie4").h2d.issue_s == 0.0
    uncited = _write(tmp_path, lambda d: d["h2d"].update(issue_s=4e-6))
    assert "h2d: no source for ['issue_s']" in _error(uncited)

    def cited(d):
        d["h2d"].update(issue_s=4e-6)
        d["h2d"]["sources"]["issue_s"] = "Assumption: a cudaMemcpyAsync call."

    assert load_profile(str(_write(tmp_path, cited, "cited.yaml"))).h2d.issue_s == 4e-6


def test_sharing_defaults_to_serial_and_takes_only_known_values(tmp_path):
    assert load_profile("rtx4090_pcie4").h2d.sharing == "serial"
    shared = _write(tmp_path, lambda d: d["nvme"].update(sharing="shared"), "shared.yaml")
    assert load_profile(str(shared)).nvme.sharing == "shared"
    bogus = _write(tmp_path, lambda d: d["h2d"].update(sharing="parallel"), "bogus.yaml")
    assert "h2d.sharing: Input should be 'serial' or 'shared' (got 'parallel')" in _error(bogus)
    both = _write(tmp_path, lambda d: d["h2d"].update(sharing="shared", preempt_prefetch=True), "both.yaml")
    assert "h2d: preempt_prefetch: true is modelled on a serial wire only" in _error(both)
