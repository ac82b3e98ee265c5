"""What the serving framework adds to the machine (simulator.compute.Runtime, `runtime.*`): hand-computed.

The machine (tests/test_placement.py's): non-expert work 1.0 s a layer step, an expert's GPU compute 0.5 s; a CPU
expert 1.0 s; the activations' round trip 0.5 s (0.25 s each way)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hardware_profiles import load_profile
from policies.lru import LRUCache
from policies.placements import CPUExperts
from simulator.cache import ExpertCache
from simulator.compute import MissCosts, Runtime, StepCosts, batch_costs, miss_costs, step_costs
from simulator.hardware import LinkSpec
from simulator.presets import get_preset
from simulator.replay import Timing, replay
from tests.helpers import chunk, toy_model

COSTS_TIMING = Timing(StepCosts(non_expert_s=1.0, expert_s=0.5), LinkSpec(bandwidth_Bps=12.0, latency_s=0.25))


def test_the_cpu_step_overhead_is_paid_once_per_step_before_its_first_cpu_expert():
    """cpu-experts, top-2, one layer, one token routing e0, e1, 2.0 s per CPU step.
    router 1.0; the activations reach the CPU at 1.25; the step's fixed cost 1.25..3.25; e0 3.25..4.25; e1
    4.25..5.25 (no second fixed cost); the outputs are back at 5.5. CPU busy 2.0 + 1.0 + 1.0 = 4.0 s."""
    miss = MissCosts(transfer_s=2.25, cpu_expert_s=1.0, activation_round_trip_s=0.5, cpu_step_overhead_s=2.0)
    cache = ExpertCache(LRUCache, 2, "layer", toy_model(layers=1, experts=4, top_k=2))
    m = replay([chunk([(0, 0, 0, [0, 1])])], cache, COSTS_TIMING, miss_costs=miss, placement=CPUExperts())
    assert (m.total_time_s, m.cpu_busy_s, m.cpu_executed) == (5.5, 4.0, 2)
    assert m.stall_time_s == 4.5


def test_the_layer_overhead_is_added_to_every_layer_steps_non_expert_work():
    model, gpu = get_preset("deepseek-v2-lite"), load_profile("rtx4090_pcie4").gpu
    plain, framed = step_costs(model, gpu), step_costs(model, gpu, runtime=Runtime(layer_overhead_s=1e-3))
    assert framed.non_expert_s == pytest.approx(plain.non_expert_s + 1e-3, rel=1e-12)
    assert framed.expert_s == plain.expert_s
    hardware = load_profile("rtx4090_pcie4")
    batched = batch_costs(model, hardware, Runtime(layer_overhead_s=1e-3))
    assert batched.non_expert_s(4, 0) == pytest.approx(batch_costs(model, hardware).non_expert_s(4, 0) + 1e-3, rel=1e-12)


def test_a_numa_aware_runtime_reads_cpu_experts_at_each_sockets_bandwidth():
    """ktransformers' machine: one socket's 307.2 GB/s; a Q4_K_M DeepSeek-V3 expert (44.04M params x 0.60547 B)
    is bandwidth-bound on the CPU, so two sockets halve its time."""
    model = get_preset("deepseek-v3", "q4_k_m")
    hardware = load_profile("rtx4090_2x_xeon6454s")
    one = miss_costs(model, hardware).cpu_expert_s
    two = miss_costs(model, hardware, runtime=Runtime(cpu_sockets=2)).cpu_expert_s
    assert one == pytest.approx(model.expert_params * model.param_bytes / 307.2e9, rel=1e-12)
    assert two == pytest.approx(one / 2, rel=1e-12)


def test_more_sockets_than_the_profile_has_is_refused(tmp_path):
    done = subprocess.run([sys.executable, "-c", "from experiments.app import main; main()", "runtime.cpu_sockets=2",
                           "replay.progress=false", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("moe-sim: runtime.cpu_sockets: 2") and "rtx4090_pcie4" in done.stderr


def test_auto_capacity_shares_the_memory_among_the_layers_left_on_the_gpu(tmp_path):
    """fp16 DeepSeek-V2-Lite on the 24 GiB RTX 4090: the memory left after the weights holds fewer than 26 x 64
    experts, so `auto` gives each layer fewer slots with every layer on the GPU than with 20 layers on the CPU."""
    capacities = {}
    for layers in (0, 20):
        out = tmp_path / f"run{layers}"
        done = subprocess.run([sys.executable, "-c", "from experiments.app import main; main()", "placement=static-layers",
                               f"placement.cpu_layers={layers}", "cache.capacity=auto", "replay.timed=false",
                               "replay.progress=false", f"hydra.run.dir={out}"], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        capacities[layers] = json.loads((out / "metrics.json").read_text())["cache_capacities"][0]
    assert capacities[0] < capacities[20] == 64
