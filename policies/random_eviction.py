"""Random eviction, seeded: the baseline any policy that claims to learn something should beat."""

import random

from simulator.cache_policy import CachePolicy


class RandomCache(CachePolicy):
    name = "random"
    compiled = "policies.compiled.random_eviction:CompiledRandom"

    def __init__(self, capacity: int, seed: int = 0):
        super().__init__(capacity)
        self.resident: dict[int, int] = {}  # key -> index in self._keys
        self._keys: list[int] = []
        self._rng = random.Random(seed)

    def hit(self, key):
        pass

    def insert(self, key):
        self.resident[key] = len(self._keys)
        self._keys.append(key)

    def evict(self, protected):
        if all(key in protected for key in self._keys):
            raise RuntimeError("every resident expert is protected")
        while True:
            index = self._rng.randrange(len(self._keys))
            key = self._keys[index]
            if key not in protected:
                break
        last = self._keys.pop()
        if last != key:
            self._keys[index] = last
            self.resident[last] = index
        del self.resident[key]
        return key
