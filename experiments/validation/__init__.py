"""`moe-validate`: the sim-to-real check, a trace run for real on this machine and through the simulator.

  validate         `moe-validate`: the probes, the runs, the comparison
  offload_runtime  the CPU runtime: expert files read with O_DIRECT AIO into DRAM, numpy FFNs
  torch_runtime    the GPU runtime: pinned host experts copied to GPU slots, torch FFNs
"""
