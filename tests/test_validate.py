"""moe-validate: a --quick run on the shipped trace and (where ../shared is present) on the DeepSeek trace writes
the cases with the interface's keys; the scaling, the token cut and the miniature runtime's bookkeeping. No accuracy
or timing assertions: those are the report's, on a quiet machine."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.config import DEFAULT_TRACE
from experiments.validation.offload_runtime import ExpertStore, OffloadRuntime
from experiments.validation.validate import CASE_KEYS, choose_scale, first_tokens, scaled_model
from hardware_profiles.calibration.uncached_read import BufferRing
from hardware_profiles.schema import load_profile
from simulator.presets import get_preset

VALIDATE = [sys.executable, "-c", "from experiments.validation.validate import main; main()"]


def validate(*args, timeout=300):
    return subprocess.run([*VALIDATE, *args], capture_output=True, text=True, timeout=timeout)


def check_cases(path: Path) -> list[dict]:
    cases = json.loads(path.read_text())
    assert isinstance(cases, list) and cases
    for case in cases:
        assert set(CASE_KEYS) <= set(case)
        assert isinstance(case["case"], str)
        for key in CASE_KEYS[1:]:
            assert isinstance(case[key], float) and case[key] >= 0, key
        assert case["measured_hits"] == case["simulated_hits"]  # same policy code, same trace
    return cases


def test_quick_run_writes_the_cases_and_a_loadable_profile(tmp_path):
    out = tmp_path / "validate.json"
    run = validate("--json", str(out), "--quick", "--store", str(tmp_path / "store"))
    assert run.returncode == 0, run.stderr
    (case,) = check_cases(out)
    assert case["tokens"] == 2 and case["capacity"] == 8
    profile = load_profile(str(out.with_suffix(".profile.yaml")))
    assert profile.gpu.transfer_slowdown >= 0
    assert "computed while its step's reads are in flight" in out.with_suffix(".profile.yaml").read_text()
    assert profile.gpu.last_fetch_slowdown is not None and profile.gpu.last_fetch_slowdown >= 0
    assert "last_fetch_slowdown: measured by moe-validate" in out.with_suffix(".profile.yaml").read_text()
    assert "expert FFN width 1408 /" in run.stdout


def test_quick_run_on_the_deepseek_trace(tmp_path, shared_traces):
    trace = tmp_path / "ds1351.parquet"
    imported = subprocess.run([sys.executable, "-c", "from traces.cli import main; main()", "import", "--format",
                               "moe-beyond", str(shared_traces / "deepseek_v2_lite_moebeyond_prompt_1351_data.csv"),
                               "-o", str(trace)], capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    out = tmp_path / "validate.json"
    run = validate("--json", str(out), "--quick", "--trace", str(trace), "--store", str(tmp_path / "store"))
    assert run.returncode == 0, run.stderr
    (case,) = check_cases(out)
    assert case["case"].startswith("ds1351 lru capacity=8/layer tokens=2")


def test_first_tokens_cuts_at_a_token_boundary():
    part = first_tokens(DEFAULT_TRACE, 3)
    assert part.tokens == 3
    assert len(part.steps) == 3 * part.model.moe_layers == len(part.chunk)
    assert [s.layer for s in part.steps[: part.model.moe_layers]] == list(range(part.model.moe_layers))


def test_scale_is_the_smallest_power_of_two_that_fits_the_budget():
    model = get_preset("deepseek-v2-lite")
    per_expert = lambda scale: scaled_model(model, scale).bytes_per_expert  # noqa: E731
    scale = choose_scale(model, 1664, 2 << 30)
    assert 1664 * per_expert(scale) <= 2 << 30 < 1664 * per_expert(scale // 2)
    scaled = scaled_model(model, scale)
    assert scaled.expert_intermediate_size == 1408 // scale and scaled.param_bytes == 4.0
    assert scaled.non_expert_params_per_layer == model.hidden_size * model.experts_per_layer


def test_runtime_counts_hits_and_loads_like_the_cache(tmp_path):
    part = first_tokens(DEFAULT_TRACE, 2)
    model = scaled_model(part.model, 256)
    store = ExpertStore(tmp_path, model)
    needed = {(s.layer, e) for s in part.steps for e in s.experts}
    assert store.ensure(needed) == len(needed)
    assert store.ensure(needed) == 0  # kept across runs
    ring = BufferRing(8 * model.moe_layers + 4, model.bytes_per_expert)
    result = OffloadRuntime(store, capacity=8, ring=ring).run(part.steps)
    assert len(ring) == ring.count  # every buffer back in the ring
    assert result.accesses == sum(len(s.experts) for s in part.steps)
    assert result.hits + result.loads == result.accesses
    assert 0 <= result.stall_s <= result.total_s


def test_runtime_times_resident_ffns_with_and_without_reads_in_flight(tmp_path):
    # Two tokens of one layer, capacity 2: token 0 misses e0, e1 (nothing resident to compute); token 1 hits e1 and
    # misses e2 (e1 computed while e2's read is in flight); token 2 hits both (nothing in flight).
    from experiments.validation.offload_runtime import Step

    from dataclasses import replace

    model = replace(scaled_model(get_preset("deepseek-v2-lite"), 256), top_k=2)
    store = ExpertStore(tmp_path, model)
    store.ensure({(0, 0), (0, 1), (0, 2)})
    steps = [Step(0, (0, 1)), Step(0, (1, 2)), Step(0, (2, 1))]
    ring = BufferRing(2 * model.moe_layers + 4, model.bytes_per_expert)
    calls, in_flight = [], []
    result = OffloadRuntime(store, capacity=2, ring=ring).run(steps, ffn_times=calls, in_flight_times=in_flight)
    assert (result.hits, result.loads) == (3, 3)
    assert len(in_flight) == 1 and len(calls) == 2
    assert all(t > 0 for t in calls + in_flight)
    # the fetched experts: token 0's e0 and e1 (e1 its step's last read), token 1's e2 (its step's only one, so last)
    fetched, last = [], []
    OffloadRuntime(store, capacity=2, ring=ring).run(steps, fetched_times=fetched, last_fetched_times=last)
    assert len(fetched) == 1 and len(last) == 2 and all(t > 0 for t in fetched + last)
    everything = []
    OffloadRuntime(store, capacity=2, ring=ring).run(steps, fetched_times=everything)
    assert len(everything) == 3


def test_sharing_is_the_wire_model_nearer_the_measured_first_arrival():
    from experiments.validation.validate import Calibration
    from hardware_profiles.calibration.fit import PathMeasurement

    nbytes = 1 << 20
    # Reads of 50 us + bytes / 4 GB/s: a serial wire delivers the first of 6 at (50 + 262) / (50 + 1573) = 19%.
    storage = PathMeasurement.from_samples("reads", "made up", {k * nbytes: [50e-6 + k * nbytes / 4e9] for k in (1, 2, 6)})
    ffn = PathMeasurement.from_samples("ffn", "made up", {nbytes: [1e-4], 2 * nbytes: [2e-4]})

    def sharing(first: float) -> str:
        return Calibration(storage, ffn, 1e-5, 0.0, 4e-5, 0.0, 1e-5, 0.0, first).sharing(nbytes, 6)[0]

    assert sharing(1.0) == "shared" and sharing(0.7) == "shared"
    assert sharing(0.19) == "serial" and sharing(0.5) == "serial"


def test_probe_bursts_record_when_the_first_read_completes(tmp_path):
    import numpy as np
    from hardware_profiles.calibration.aio import AsyncReader
    from hardware_profiles.calibration.storage_bench import burst_samples
    from hardware_profiles.calibration.uncached_read import write_padded

    files = [tmp_path / f"e{i}.bin" for i in range(4)]
    for f in files:
        write_padded(f, bytes(8192))
    ring = BufferRing(8, 8192)
    firsts: list = []
    with AsyncReader() as reader:
        samples = burst_samples(reader, [files], 8192, ring, [1, 3], 2, np.random.default_rng(0), firsts=firsts)
    assert sorted(samples) == [8192, 3 * 8192]
    assert [k for k, _, _ in firsts] == [1, 1, 3, 3]
    assert all(0 < first <= last for _, first, last in firsts)


def test_torch_runtime_copies_the_experts_and_counts_like_the_cache():
    torch = pytest.importorskip("torch")
    from experiments.validation.torch_runtime import HostExperts

    part = first_tokens(DEFAULT_TRACE, 2)
    model = scaled_model(part.model, 256)  # float32 on the CPU
    store = HostExperts(model, torch.device("cpu"))
    needed = {(s.layer, e) for s in part.steps for e in s.experts}
    assert store.ensure(needed) == len(needed) and store.ensure(needed) == 0
    ring = store.ring(8 * model.moe_layers + 4)
    reader = store.open_reader()
    (layer, expert), *_ = sorted(needed)
    slot = ring.take()
    reader.wait(reader.submit([(store.sources()[layer][expert], slot, store.nbytes)])[0])
    assert torch.equal(slot, store.sources()[layer][expert])  # the weights the FFN then reads are the expert's
    ring.give(slot)
    result = OffloadRuntime(store, capacity=8, ring=ring).run(part.steps)
    assert len(ring) == ring.count
    assert result.accesses == sum(len(s.experts) for s in part.steps)
    assert result.hits + result.loads == result.accesses


def test_quick_run_of_the_gpu_runtime_code_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "validate.json"
    run = validate("--json", str(out), "--quick", "--runtime", "torch-cpu")
    assert run.returncode == 0, run.stderr
    (case,) = check_cases(out)
    assert case["runtime"] == "torch-cpu" and case["model"]["param_bytes"] == 4.0
    assert load_profile(str(out.with_suffix(".profile.yaml"))).gpu.name == "CPU (torch, code-path test)"


def test_cuda_runtime_without_cuda_is_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    run = validate("--json", str(tmp_path / "v.json"), "--quick", "--runtime", "cuda")
    assert run.returncode == 2
    assert run.stderr.strip() == "moe-validate: --runtime cuda: torch sees no CUDA device (torch.cuda.is_available() is false)"
    assert not (tmp_path / "v.json").exists()


def test_quick_run_on_the_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path / "validate.json"
    run = validate("--json", str(out), "--quick", "--runtime", "cuda")
    assert run.returncode == 0, run.stderr
    (case,) = check_cases(out)
    assert case["model"]["param_bytes"] == 2.0
