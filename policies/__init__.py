"""Cache policies: which experts stay on the GPU. One narrow interface (`CachePolicy`), registered by name."""

from simulator.cache_policy import CachePolicy
from policies.registry import POLICIES, policy_class, register

__all__ = ["CachePolicy", "POLICIES", "policy_class", "register"]
