"""The edge: the Hydra app `moe-sim`, its configs, sweeps, the benchmark, and result files."""
