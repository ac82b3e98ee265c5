"""MoE-Infinity's activation-aware prefetching: match the sequence's Expert Activation Matrix against a collection.

Per REFERENCE.md §4: EAM[l, e] counts how often expert e of layer l was chosen in the current sequence. After
layer l's router, the current EAM (rows normalised) is compared with every stored EAM over the layers seen so far
(layers after l are masked), by mean cosine over those layers; the most similar stored EAM's experts of the
remaining layers l' > l are requested with priority EAM[l', e] · (1 − (l' − l)/(L + 1)), highest first.
The collection (EAMC) holds past sequences' EAMs: built from training sequences with `fit()` (or from a
MoE-Infinity `.npy` collection through `load_collection`) and grown online as each replayed sequence ends, up to
`collection_size` (oldest dropped first). Departure: we cap the requests at `top_n` experts per layer (default
top_k) so that one match does not flood the cache; MoE-Infinity relies on its priority queue alone.

The similarity is kept incrementally (dot products per stored EAM and layer), so a layer step costs O(N·L), not
O(N·L·E).
"""

import numpy as np

from simulator.prefetcher import Prefetcher, at_least_one


class EAMPrefetcher(Prefetcher):
    name = "eam"

    def __init__(self, model, top_n: int | None = None, collection_size: int = 1000):
        self.layers = model.moe_layers
        self.experts = model.experts_per_layer
        self.top_n = at_least_one("top_n", top_n) or model.top_k
        self.collection_size = at_least_one("collection_size", collection_size)
        shape = (collection_size, self.layers, self.experts)
        self._stored = np.zeros(shape)  # a ring of count matrices; the first `_size` slots are filled
        self._normalised = np.zeros(shape)  # the same with every row scaled to unit length
        self._size = 0
        self._next = 0
        self.eam = np.zeros((self.layers, self.experts))
        self._dots = np.zeros((0, self.layers))

    def load_collection(self, collection: np.ndarray) -> None:
        """Add EAMs [N, L, E] (e.g. MoE-Infinity's EAMC) to the collection."""
        for eam in np.asarray(collection, dtype=float):
            self._store(eam)

    def fit(self, chunks) -> None:
        """Build EAMs from training sequences."""
        eam, current = np.zeros((self.layers, self.experts)), None
        for chunk in chunks:
            for seq, layer, experts in zip(chunk.sequence.tolist(), chunk.layer.tolist(), chunk.experts.tolist()):
                if seq != current and current is not None:
                    self._store(eam)
                    eam = np.zeros((self.layers, self.experts))
                current = seq
                eam[layer, [e for e in experts if e >= 0]] += 1
        if current is not None:
            self._store(eam)

    def _store(self, eam: np.ndarray) -> None:
        if not eam.any():
            return
        slot = self._next
        self._stored[slot] = eam
        norms = np.linalg.norm(eam, axis=1, keepdims=True)
        self._normalised[slot] = np.divide(eam, norms, out=np.zeros_like(eam), where=norms > 0)
        self._next = (slot + 1) % self.collection_size
        self._size = min(self._size + 1, self.collection_size)

    def start_sequence(self) -> None:
        self._store(self.eam)
        self.eam = np.zeros((self.layers, self.experts))
        self._dots = np.zeros((self._size, self.layers))

    def after_router(self, view):
        layer, experts = view.layer, view.experts
        self.eam[layer, experts] += 1
        n = self._size
        if not n:
            return []
        if self._dots.shape[0] != n:
            self._dots = np.einsum("nle,le->nl", self._normalised[:n], self.eam)
        else:
            self._dots[:, layer] += self._normalised[:n, layer, experts].sum(axis=1)
        seen = np.flatnonzero(self.eam[: layer + 1].any(axis=1))
        norms = np.linalg.norm(self.eam[seen], axis=1)
        similarity = (self._dots[:, seen] / norms).mean(axis=1)
        best = self._stored[int(np.argmax(similarity))]
        requests = []
        for target in range(layer + 1, self.layers):
            decay = 1 - (target - layer) / (self.layers + 1)
            ranked = np.argsort(-best[target], kind="stable")[: self.top_n]
            requests += [(best[target, e] * decay, target, int(e)) for e in ranked if best[target, e] > 0]
        requests.sort(key=lambda r: -r[0])
        return [(target, e) for _, target, e in requests]
