"""Oracle next-k-layers prefetcher: loads exactly the experts the next `horizon` layer steps will route to.

It reads the future (`oracle = True`), so it is an upper bound for any prefetcher with the same horizon, not a
system one could build.
"""

from simulator.prefetcher import Prefetcher, at_least_one


class OraclePrefetcher(Prefetcher):
    name = "oracle"
    oracle = True

    def __init__(self, model, horizon: int = 1):
        self.horizon = at_least_one("horizon", horizon)

    def _upcoming(self, view):
        return [(layer, expert) for layer, experts in view.future(self.horizon) for expert in experts]

    at_token_start = _upcoming
    after_router = _upcoming
