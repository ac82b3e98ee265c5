"""The simulator core: time, hardware and the replay of layer steps.

It takes plain typed objects (an `MoEModel`, a `HardwareProfile`, cache policies, an iterable of trace chunks)
and returns metrics. It knows nothing of Hydra, file formats or plots.
"""
