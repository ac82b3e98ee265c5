"""A machine as plain typed data, in SI units (bytes, seconds, bytes/s, FLOP/s).

YAML profiles are validated into these objects at the edge (`hardware_profiles.schema`); the core only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_bytes: int
    memory_bandwidth_Bps: float
    """Achievable device-memory bandwidth; expert compute at small batch is bound by it."""
    flops: float
    """Dense fp16/bf16 tensor FLOP/s (no sparsity)."""
    kernel_overhead_s: float
    """Fixed cost per expert FFN call (kernel launches, synchronisation)."""
    transfer_slowdown: float = 0.0
    """Fraction by which expert compute runs longer while the layer step's own fetches are in flight (the transfers'
    DMA and completion work competing for the processor's memory and cores); 0: unaffected (unmeasured on a GPU,
    where copy engines write HBM at a few percent of its bandwidth)."""
    fetched_slowdown: float = 0.0
    """Fraction by which an expert computed as its weights land (a fetched expert) runs longer than a resident one:
    the fetch leaves its bytes outside the processor's caches in a state slower to read than memory the processor
    read before (measured on the CPU miniature, README "moe-validate"); 0: unaffected (unmeasured on a GPU)."""
    last_fetch_slowdown: float | None = None
    """The same fraction for the expert of a layer step's last demand fetch, the last bytes the link wrote in the
    step's burst: on the CPU miniature that buffer alone computes 2.2-2.6x slower, the burst's earlier ones at a resident
    one's speed (README "moe-validate"); None: as `fetched_slowdown`."""


@dataclass(frozen=True)
class LinkSpec:
    """One direction of one interconnect: a transfer of n bytes takes latency_s + n / bandwidth_Bps."""

    bandwidth_Bps: float
    latency_s: float
    copy_engines: int = 1
    """Transfers that may be in set-up at once; the wire itself carries one transfer at a time."""
    preempt_prefetch: bool = False
    """A demand fetch pauses a prefetch that is on the wire (the prefetch resumes after it) instead of waiting."""
    pageable_bandwidth_Bps: float | None = None
    """Bandwidth from pageable host memory (a bounce through a pinned buffer), where it differs from pinned."""
    issue_s: float = 0.0
    """Time the compute stream spends issuing one transfer on this link (e.g. a cudaMemcpyAsync call, an io_submit);
    charged to the GPU stream of the step that issues it. The transfer's own latency still counts from the issue."""
    sharing: str = "serial"
    """How transfers issued together use the wire. "serial": one after another, so the first arrives after one
    transfer's time (CUDA copies on one stream). "shared": they share the bandwidth fairly and equal-sized ones all
    arrive at the end of the group (an NVMe or virtio device serving a queue of reads at once, copies on several
    streams). Transfers booked later still queue behind the group."""
    duplex_bandwidth_Bps: float | None = None
    """This direction's bandwidth while the opposite direction carries data at the same time, where the host cannot
    run both at full speed (an A100's PCIe 4.0 H2D drops to 11–13 GB/s under a concurrent D2H copy); None: full
    duplex. The simulator's D2H traffic is the activations a CPU-run expert reads (`Link.carry_opposite`)."""


@dataclass(frozen=True)
class CPUSpec:
    name: str
    memory_bandwidth_Bps: float
    """DRAM bandwidth the expert compute sees, of one socket (the GPU's NUMA node) on a multi-socket host."""
    flops: float
    """One socket's FLOP rate."""
    threads: int = 0
    """Hardware threads the runtime uses for expert compute (e.g. ktransformers' --cpu_infer); 0 = not given.
    Descriptive: the CPU timing reads the bandwidth and FLOP rate."""
    sockets: int = 1
    """CPU sockets (NUMA nodes). A runtime that reads its CPU experts from k of them (`runtime.cpu_sockets`, with
    the experts copied to each node) gets k times one socket's bandwidth and FLOP rate."""


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    gpu: GPUSpec
    h2d: LinkSpec
    """Host-to-device path that carries expert weights from their home (CPU DRAM) to the GPU."""
    d2h: LinkSpec
    cpu: CPUSpec
    nvme: LinkSpec | None = None
    """NVMe reads into DRAM; `copy_engines` is the number of reads in flight."""
    gds: LinkSpec | None = None
    """GPUDirect Storage: NVMe reads straight into GPU memory."""
    description: str = ""
