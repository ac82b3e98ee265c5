"""`moe-sim`: the Hydra app. Composes the config, validates it, runs one simulation, writes the run directory.

Config groups `policy`, `prefetch`, `model` and `hardware` are filled from the registries, the model presets and
the shipped profiles (so there is one list of each; a class's constructor defaults become its config keys); a user adds their own with `--config-dir DIR` holding
`DIR/policy/NAME.yaml` etc. Group choices and keys are checked before Hydra starts (experiments.overrides) so a typo
costs one line, not a page.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from experiments.config import RunConfig
from experiments.curve_store import CURVES_DIR
from experiments.overrides import rewrite_args
from experiments.results import METRICS_FILE, write_run
from experiments.run import memory_warning, simulate
from experiments.sweep import check_one_job_per_shape, discard_results, input_digests, is_complete, register_resolver
from hardware_profiles.schema import list_profiles
from policies.miss_handling import MISS_HANDLERS
from policies.placements import PLACEMENTS
from policies.prefetchers import PREFETCHERS
from policies.registry import POLICIES
from policies.routing import ROUTING
from policies.schedulers import SCHEDULERS
from simulator.errors import InputError
from simulator.presets import PRESETS

register_resolver()  # names sweep job directories; here so that launcher worker processes have it too


def class_node(entry: str, cls: type, skip: tuple[str, ...]) -> dict:
    """{_target_, every constructor parameter with a default}: the keys a user may override on the command line."""
    node = {"_target_": entry.replace(":", ".")}
    for param in inspect.signature(cls).parameters.values():
        if param.name not in skip and param.default is not param.empty:
            node[param.name] = "${seed}" if param.name == "seed" else param.default
    return node


def register_config_groups() -> None:
    cs = ConfigStore.instance()
    for name, entry in POLICIES.items():
        cs.store(group="policy", name=name, node=class_node(entry, POLICIES.load(name), ("capacity", "top_k")))
    for name, entry in PREFETCHERS.items():
        # The MoE model comes first, positionally, without a default, so it is no key; `prefetch.model` (a file) may be.
        node = {"_target_": None} if entry is None else class_node(entry, PREFETCHERS.load(name), ())
        cs.store(group="prefetch", name=name, node={**node, "train_trace": None})
    for name, entry in MISS_HANDLERS.items():
        node = {"_target_": None} if entry is None else class_node(entry, MISS_HANDLERS.load(name), ())
        cs.store(group="miss", name=name, node=node)
    for name, entry in PLACEMENTS.items():
        node = {"_target_": None} if entry is None else class_node(entry, PLACEMENTS.load(name), ())
        cs.store(group="placement", name=name, node=node)
    for name, entry in ROUTING.items():
        node = {"_target_": None} if entry is None else class_node(entry, ROUTING.load(name), ())
        cs.store(group="routing", name=name, node=node)
    for name, entry in SCHEDULERS.items():
        cs.store(group="scheduler", name=name, node=class_node(entry, SCHEDULERS.load(name), ()))
    cs.store(group="model", name="from_trace", node={"preset": None, "dtype": None, "kind": None})
    for name in PRESETS:
        cs.store(group="model", name=name, node={"preset": name, "dtype": None, "kind": None})
    for name in list_profiles():
        cs.store(group="hardware", name=name, node={"profile": name})


def recorded_config(cfg: DictConfig) -> dict:
    """The resolved config as metrics.json keeps it, without the `routing` node while the router's choice stands: a
    run that routes as runs did before routing could change keeps their files byte for byte, so a sweep finished
    then resumes as complete."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if config.get("routing") == {"_target_": None}:
        del config["routing"]
    return config


@hydra.main(version_base=None, config_path="conf", config_name="config")
def _run(cfg: DictConfig) -> None:
    if multiprocessing.parent_process() is not None:
        # A launcher's worker: Ctrl-C is the main process's to report (in one line); it then ends the workers.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run = RunConfig.from_hydra(cfg)
        job_dir = Path(HydraConfig.get().runtime.output_dir)
        config = recorded_config(cfg)
        inputs = input_digests(config)
        if is_complete(job_dir, config, inputs):
            print(f"skip {job_dir}: complete results of this config are there")
            return
        discard_results(job_dir)
        bar = tqdm(desc="replay", unit="row", disable=None if run.replay.progress else True, leave=False)
        curve_dir = None
        if run.replay.curves and HydraConfig.get().mode == RunMode.MULTIRUN:
            curve_dir = Path(HydraConfig.get().sweep.dir) / CURVES_DIR / inputs["trace.path"][:16]
        with bar:
            result = simulate(run, progress=bar, curve_dir=curve_dir)
    except InputError as err:
        print(f"moe-sim: {err}", file=sys.stderr)
        sys.exit(2)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = result.metrics.summary()
    summary["fits_gpu_memory"] = result.gpu_memory.fits
    warning = memory_warning(result.gpu_memory, result.hardware)
    if warning:
        print(f"moe-sim: {warning}", file=sys.stderr)
    document = {
        "metrics": summary,
        "config": config,
        "model": result.model.to_dict(),
        "hardware": result.hardware.name,
        "trace": {"path": str(result.trace.path), "provenance": result.trace.meta.provenance},
        "inputs": inputs,
        "gpu_memory": result.gpu_memory.to_dict(),
    }
    if run.cache.sizing != "uniform" or run.cache.capacity == "auto":
        document["cache_capacities"] = result.capacities
    write_run(out_dir, document, result.metrics.layer_table(), result.metrics.timeline, result.metrics.requests,
              result.metrics.iterations)
    timing = f" time/token {summary['time_per_token_s'] * 1e3:.3f} ms, stall {summary['stall_fraction']:.1%}" if result.metrics.timed else ""
    prefetch = f" prefetch={cfg.prefetch._target_.rsplit('.', 1)[-1]}" if cfg.prefetch._target_ else ""
    rows = ", MoLE table rows in its bytes" if result.model.kind == "mole" else ""
    if result.metrics.rerouting is not None:
        prefetch += f" routing={cfg.routing._target_.rsplit('.', 1)[-1]} (rerouted {summary['rerouted_accesses']:,})"
    chosen = f"auto = {result.capacities[0]}" if run.cache.capacity == "auto" else run.cache.capacity
    size = f"capacity={chosen} ({run.cache.scope}{rows})" if run.cache.sizing == "uniform" else \
        f"{sum(result.capacities)} slots sized by {run.cache.sizing} ({min(result.capacities)}..{max(result.capacities)} per layer)"
    served = ""
    if run.serve.mode != "none":
        served = f" batch<={run.serve.max_batch} ({run.serve.arrival})"
        if result.metrics.timed:
            timing += f", {summary['throughput_tok_s']:.1f} tok/s, TTFT p99 {summary['ttft_p99_s'] * 1e3:.1f} ms"
    print(f"{cfg.policy._target_.rsplit('.', 1)[-1]} {size}{prefetch}{served}: "
          f"hit rate {summary['hit_rate']:.4f}{timing} -> {out_dir}")


def main() -> None:
    register_config_groups()
    try:
        sys.argv[1:] = rewrite_args(sys.argv[1:])
    except InputError as err:
        print(f"moe-sim: {err}", file=sys.stderr)
        sys.exit(2)
    # An interrupted parallel sweep leaves the launcher's semaphores to its resource tracker, which would warn.
    os.environ.setdefault("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")
    check_one_job_per_shape()
    try:
        _run()
    except KeyboardInterrupt:
        print(f"moe-sim: interrupted; {_finished()}; run the same command again to resume (finished runs are skipped)",
              file=sys.stderr)
        sys.exit(130)


def _finished() -> str:
    """What an interrupted run or sweep leaves: the complete runs (their metrics.json) under its folder."""
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    folder = args.get("hydra.sweep.dir") or args.get("hydra.run.dir")
    if folder is None and "+sweep" in args:
        folder = f"multirun/{args['+sweep']}"  # every shipped sweep config writes there
    if folder is None:
        return f"finished runs kept their {METRICS_FILE} under multirun/ (or outputs/)"
    done = len(list(Path(folder).glob(f"**/{METRICS_FILE}")))
    return f"{done} run(s) finished in {folder}"
