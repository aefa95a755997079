"""FedVSSL's server arithmetic, free of Flower so it can be tested by hand.

Client weights mix loss-based and sample-count weights,
``w_k = alpha * softmax(-loss)_k + (1 - alpha) * n_k / sum(n)``, and with
``beta = 1`` the new global model is the 1/2-1/2 average of that aggregate and the
previous global model (from round 2 on). Sums run in float64 over a stream of
client states, so memory holds one accumulator, never K stacked models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

State = Mapping[str, np.ndarray]


def client_weights(losses: Sequence[float], num_examples: Sequence[int], alpha: float) -> np.ndarray:
    """Per-client weights that sum to one."""
    loss = np.asarray(losses, dtype=np.float64)
    n = np.asarray(num_examples, dtype=np.float64)
    if loss.shape != n.shape or loss.size == 0:
        raise ValueError(f"need one loss and one sample count per client, got {loss.size} and {n.size}")
    if not np.all(np.isfinite(loss)):
        raise ValueError(f"client losses must be finite, got {loss.tolist()}")
    if np.any(n <= 0):
        raise ValueError(f"client sample counts must be positive, got {n.tolist()}")
    soft = np.exp(-(loss - loss.min()))  # shifted for numerical stability
    soft /= soft.sum()
    return alpha * soft + (1.0 - alpha) * n / n.sum()


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # Integer buffers (BN num_batches_tracked) are averaged as floats and rounded back.
    return np.rint(x).astype(dtype) if np.issubdtype(dtype, np.integer) else x.astype(dtype)


def weighted_average(states: Iterable[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Sum_k w_k * state_k, key by key in the first state's order, dtypes preserved."""
    acc: dict[str, np.ndarray] = {}
    dtypes: dict[str, np.dtype] = {}
    for count, (state, w) in enumerate(zip(states, weights, strict=True)):
        if not acc:
            dtypes = {k: np.asarray(v).dtype for k, v in state.items()}
            acc = {k: np.asarray(v, dtype=np.float64) * w for k, v in state.items()}
        else:
            if state.keys() != acc.keys():
                raise ValueError(f"client {count} sent different tensors: {sorted(set(state) ^ set(acc))[:3]}")
            for k, v in state.items():
                acc[k] += np.asarray(v, dtype=np.float64) * w
    if not acc:
        raise ValueError("nothing to aggregate")
    return {k: _cast(v, dtypes[k]) for k, v in acc.items()}


def beta_step(aggregate: State, previous: State) -> dict[str, np.ndarray]:
    """G_t = 1/2 A_t + 1/2 G_{t-1}: a two-point moving average (server lr 0.5)."""
    if aggregate.keys() != previous.keys():
        raise ValueError("the aggregate and the previous global model have different tensors")
    return {
        k: _cast(0.5 * np.asarray(a, np.float64) + 0.5 * np.asarray(previous[k], np.float64), np.asarray(a).dtype)
        for k, a in aggregate.items()
    }
