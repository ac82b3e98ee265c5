"""Where a missed expert comes from: its home tier and the paths that bring it to the GPU.

home "dram": every expert lives in CPU DRAM; a GPU miss crosses the host-to-device link.
home "nvme": experts live on NVMe, and DRAM may keep a cache of them (`dram_cache`, its own capacity and policy).
A GPU miss whose expert is in DRAM crosses the host-to-device link; otherwise it is read from NVMe, either into DRAM
and then over the host-to-device link ("staged", and it enters the DRAM cache), or straight into GPU memory over
GPUDirect Storage ("gds"). NVMe reads queue on their own link, whose `copy_engines` is the number of reads in flight.

Within a layer step, fetches from DRAM are booked before fetches that must first come off NVMe, so that a fast
fetch never queues behind a slow one's later start.
"""

from __future__ import annotations

from simulator.cache import ExpertCache
from simulator.link import Link, Transfer


class MemoryHierarchy:
    def __init__(self, h2d: Link | None, experts_per_layer: int, *, nvme: Link | None = None, gds: Link | None = None,
                 dram_cache: ExpertCache | None = None, home: str = "dram", path: str = "staged"):
        self.h2d = h2d
        self.nvme = nvme
        self.gds = gds
        self.dram_cache = dram_cache
        self.on_nvme = home == "nvme"
        self.direct = path == "gds"
        self.experts_per_layer = experts_per_layer
        self.dram_accesses = 0
        self.dram_hits = 0
        self.bytes_nvme = 0
        self._h2d_issue = h2d.spec.issue_s if h2d is not None else 0.0
        self._nvme_issue = nvme.spec.issue_s if nvme is not None else 0.0
        self._gds_issue = gds.spec.issue_s if gds is not None else 0.0

    def in_dram(self, layer: int, expert: int) -> bool:
        """Judge (and, for a staged read, load) the expert in the DRAM tier; counts the DRAM access."""
        if not self.on_nvme:
            return True
        self.dram_accesses += 1
        if self.dram_cache is None:
            return False
        if self.direct:
            hit = self.dram_cache.is_resident(layer, expert)
        else:
            hit = not self.dram_cache.access(layer, [expert])
        self.dram_hits += hit
        return hit

    def demand(self, layer: int, fetches: list[tuple[int, int]], now: float) -> tuple[list[float], float]:
        """Book demand fetches [(expert, bytes)] of one layer step ready at `now`. Returns their arrival times, in
        input order, and the compute stream's time to issue them (each link's `issue_s` per transfer booked on it;
        a staged NVMe read is two transfers)."""
        base = layer * self.experts_per_layer
        if not self.on_nvme:
            h2d = self.h2d
            issue_s = len(fetches) * self._h2d_issue
            return (h2d.transfer_group(now, [(base + e, nbytes) for e, nbytes in fetches]) if h2d else [0.0] * len(fetches)), issue_s
        issue_s = 0.0
        arrivals = [0.0] * len(fetches)
        from_dram, from_nvme = [], []
        for i, (expert, nbytes) in enumerate(fetches):
            if self.in_dram(layer, expert):
                from_dram.append(i)
            else:
                from_nvme.append(i)
                self.bytes_nvme += nbytes
        if self.h2d is None:
            return arrivals, issue_s
        self._book(self.h2d, now, fetches, from_dram, base, arrivals)
        issue_s += len(from_dram) * self._h2d_issue
        if self.direct:
            self._book(self.gds, now, fetches, from_nvme, base, arrivals)
            issue_s += len(from_nvme) * self._gds_issue
        else:
            self._book(self.nvme, now, fetches, from_nvme, base, arrivals)
            for i in from_nvme:  # each staged read goes on to the GPU once it is in DRAM
                expert, nbytes = fetches[i]
                arrivals[i] = self.h2d.transfer(arrivals[i], nbytes, base + expert)
            issue_s += len(from_nvme) * (self._nvme_issue + self._h2d_issue)
        return arrivals, issue_s

    @staticmethod
    def _book(link: Link, now: float, fetches: list[tuple[int, int]], chosen: list[int], base: int, arrivals: list[float]) -> None:
        """Book fetches[i] for i in `chosen` on `link` as one group; their ends go into arrivals[i]."""
        if chosen:
            ends = link.transfer_group(now, [(base + fetches[i][0], fetches[i][1]) for i in chosen])
            for i, end in zip(chosen, ends):
                arrivals[i] = end

    def prefetch(self, layer: int, expert: int, key: int, nbytes: int, now: float) -> tuple[Transfer, float]:
        """Queue a prefetch on the link that ends in GPU memory; an NVMe-resident expert is read first. Returns the
        transfer and the compute stream's time to issue it, as `demand` does."""
        if self.in_dram(layer, expert):
            return self.h2d.prefetch(now, key, nbytes), self._h2d_issue
        self.bytes_nvme += nbytes
        if self.direct:
            return self.gds.prefetch(now, key, nbytes), self._gds_issue
        return self.h2d.prefetch(self.nvme.transfer(now, nbytes, key, for_prefetch=True), key, nbytes), self._nvme_issue + self._h2d_issue

    def links(self) -> list[Link]:
        return [link for link in (self.h2d, self.gds) if link is not None]

    def advance(self, now: float) -> None:
        for link in self.links():
            link.advance(now)
