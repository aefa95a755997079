"""Key frames and piecewise interpolation: CtP's ``dynamic_utils``.

Used for the CtP patch trajectories, their opacities, and the dynamic brightness
and contrast jitters. All functions take an explicit ``numpy`` Generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# "random" interpolation: per segment, linear (0.7), accelerating (0.15) or decelerating (0.15).
MODES = ("linear", "accelerate", "decelerate")
MODE_PROBS = (0.7, 0.15, 0.15)


def sample_key_frames(num_frames: int, probs: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Sorted key frames, always including 0 and T-1; k extra ticks with P(k) = probs[k]."""
    last = num_frames - 1
    k = int(rng.choice(len(probs), p=np.asarray(probs, dtype=float) / np.sum(probs)))
    if k == 0 or num_frames < 3:
        return np.unique([0, last])
    d = num_frames / (k + 1)
    ticks = np.array([int(d * i) for i in range(1, k + 1)])
    j = int(d / 3)
    if j > 0:
        ticks = ticks + rng.integers(-j, j, size=k)  # [-j, j-1], as NumPy's randint in the reference
    return np.unique(np.clip(np.concatenate([[0, last], ticks]), 0, last))


def interpolate(
    keys: np.ndarray, values: np.ndarray, num_frames: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Fill frames between key frames; ``rng=None`` means linear everywhere, else the random modes.

    ``values`` holds one row per key frame (any trailing shape); one mode per segment.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.empty((num_frames, *values.shape[1:]))
    out[keys[0]] = values[0]
    for (k0, k1), start, end in zip(zip(keys[:-1], keys[1:], strict=True), values[:-1], values[1:], strict=True):
        delta = k1 - k0
        k = np.arange(delta + 1).reshape(-1, *([1] * (values.ndim - 1)))
        mode = "linear" if rng is None else MODES[int(rng.choice(3, p=MODE_PROBS))]
        if mode == "linear":
            seg = start + (end - start) * k / delta
        elif mode == "accelerate":
            seg = start + 0.5 * (2 * (end - start) / delta**2) * k**2
        else:
            seg = end + 0.5 * (2 * (start - end) / delta**2) * (delta - k) ** 2
        out[k0 : k1 + 1] = seg
    return out
