"""The expert that calibration times and the validation runtime runs: a gated (SwiGLU) FFN on the CPU, in numpy.

    y = (silu(x · W_gate) ⊙ (x · W_up)) · W_down,   W_gate, W_up: hidden × ffn,  W_down: ffn × hidden

Weights are float32 (numpy has no fast fp16/bf16 matrix product), stored as one contiguous block
[W_gate | W_up | W_down], so an expert is one buffer that one read fills. Calibration and the runtime call the same
function, so the time the profile predicts is the time of the code that runs.
"""

from __future__ import annotations

import numpy as np

DTYPE = np.float32
PARAM_BYTES = 4


def expert_params(hidden: int, ffn: int) -> int:
    return 3 * hidden * ffn


def expert_views(block: np.ndarray, hidden: int, ffn: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W_gate, W_up, W_down) as views into one flat float32 block of at least 3·hidden·ffn values."""
    n = hidden * ffn
    return (
        block[:n].reshape(hidden, ffn),
        block[n : 2 * n].reshape(hidden, ffn),
        block[2 * n : 3 * n].reshape(ffn, hidden),
    )


def random_block(hidden: int, ffn: int, rng: np.random.Generator) -> np.ndarray:
    """One expert's weights, N(0, 1/hidden)-scaled so activations stay finite and normal (no denormal slow paths)."""
    return (rng.standard_normal(expert_params(hidden, ffn), dtype=DTYPE) * DTYPE(hidden**-0.5)).astype(DTYPE, copy=False)


def gated_ffn(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """One expert on `x` (tokens × hidden)."""
    gate = x @ w_gate
    up = x @ w_up
    return (gate / (1.0 + np.exp(-gate)) * up) @ w_down
