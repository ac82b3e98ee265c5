"""Compiled twins of the shipped cache policies (simulator.compiled_policy): numba loops that decide exactly as the
Python classes do, for the hit-rate-only replay. The classes in `policies/` stay the reference."""
