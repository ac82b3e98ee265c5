"""Measuring a machine into a hardware profile: `moe-calibrate` and the probes `moe-validate` shares with it.

  calibrate      `moe-calibrate`: runs the measurements, writes a cited profile
  document       the profile document both `moe-calibrate` and `moe-validate` write: citation, sections, the write
  fit            latency + bytes / bandwidth fitted to (bytes, seconds) points
  cpu_bench      DRAM copy bandwidth, the CPU expert FFN (per-call overhead, bandwidth, FLOP rate)
  cuda_bench     host<->device copies, device memory bandwidth, the GPU expert FFN
  storage_bench  storage reads with the page cache defeated, one at a time and in flight
  uncached_read  O_DIRECT / fadvise reads into aligned buffers
  aio            Linux AIO (io_submit) for reads in flight
  expert_ffn     the gated expert FFN the benchmarks time
"""
