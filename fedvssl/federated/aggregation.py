"""FedVSSL's server arithmetic, free of Flower so it can be tested by hand.

Client weights mix loss-based and sample-count weights,
``w_k = alpha * softmax(-loss)_k + (1 - alpha) * n_k / sum(n)``, and with
``beta = 1`` the new global model is the 1/2-1/2 average of that aggregate and the
previous global model (from round 2 on). Sums run in float64 one tensor at a time,
so memory holds the result and one tensor's accumulator, never K stacked models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

State = Mapping[str, np.ndarray]
_CHUNK = 1 << 17  # elements per float64 chunk (1 MiB): cache-resident, few Python iterations
_NORM_CHUNK = 1 << 16  # elements per step of update_norm (256 KiB of float32)


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


def cast_like(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``x`` in ``like``'s dtype: integers rounded (an aggregate of BatchNorm counters), floats cast."""
    return _cast(np.asarray(x), np.asarray(like).dtype)


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Sum_k w_k * state_k, key by key in the first state's order, dtypes preserved.

    The outer loop runs over tensors and the inner one over clients, so besides the
    result only one tensor's float64 accumulator is alive at a time; ``states`` may
    be lazy mappings that decode a tensor only when it is read.
    """
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} client states but {len(weights)} weights")
    if not states:
        raise ValueError("nothing to aggregate")
    keys = list(states[0].keys())
    for i, state in enumerate(states[1:], start=1):
        if list(state.keys()) != keys:
            raise ValueError(f"client {i} sent different tensors: {sorted(set(state) ^ set(keys))[:3]}")
    out: dict[str, np.ndarray] = {}
    acc = np.empty(_CHUNK, dtype=np.float64)
    tmp = np.empty(_CHUNK, dtype=np.float64)
    for key in keys:
        columns = [np.asarray(state[key]).reshape(-1) for state in states]
        first = np.asarray(states[0][key])
        result = np.empty(first.size, dtype=first.dtype)
        # Chunks small enough to stay in cache: inputs are read once, the float64 sums never leave it.
        for start in range(0, first.size, _CHUNK):
            stop = min(start + _CHUNK, first.size)
            a, t = acc[: stop - start], tmp[: stop - start]
            np.multiply(columns[0][start:stop], weights[0], out=a, dtype=np.float64)
            for col, w in zip(columns[1:], weights[1:], strict=True):
                np.multiply(col[start:stop], w, out=t, dtype=np.float64)
                a += t
            result[start:stop] = _cast(a, first.dtype)
        out[key] = result.reshape(first.shape)
    return out


def beta_step(aggregate: State, previous: State) -> dict[str, np.ndarray]:
    """G_t = 1/2 A_t + 1/2 G_{t-1}: a two-point moving average (server lr 0.5).

    The same chunked float64 sum as the clients' average: whole-model float64
    temporaries cost 0.6 s a round on a 33 M-parameter backbone, the chunks 0.1 s.
    """
    if aggregate.keys() != previous.keys():
        raise ValueError("the aggregate and the previous global model have different tensors")
    return weighted_average([aggregate, {k: previous[k] for k in aggregate}], [0.5, 0.5])


def clamp_variances(state: dict[str, np.ndarray]) -> int:
    """Set BatchNorm running variances below 0 to 0, in place; how many entries were below.

    A model that trained has no negative variance, but a server optimiser's step or DP noise
    can push one below 0, and BatchNorm then gives NaN. Clamping is post-processing of the
    released model: under DP it costs no privacy.
    """
    below = 0
    for key, value in state.items():
        if key.endswith("running_var") and (count := int((np.asarray(value) < 0).sum())):
            state[key] = np.maximum(value, 0).astype(np.asarray(value).dtype)
            below += count
    return below


def update_norm(state: State, previous: State | None = None) -> float:
    """The L2 norm of ``state - previous`` over the floating-point tensors (of ``state`` if
    ``previous`` is None: a bfloat16 reply is the update itself).

    The integer BatchNorm counters are left out: they grow by the number of local steps
    every round and would outweigh the change of the weights. Differences and dot
    products run in the tensors' dtype over cache-sized chunks, and the chunks' sums add
    up in float64: 10x faster than float64 throughout (a round computes six norms of 33 M
    weights), and within a relative 1e-6 of it, plenty for a metric.
    """
    total = 0.0
    for key, before in (state if previous is None else previous).items():
        if np.issubdtype(before.dtype, np.floating):
            a = np.asarray(state[key]).reshape(-1)
            b = None if previous is None else np.asarray(before).reshape(-1)
            for start in range(0, a.size, _NORM_CHUNK):
                total += _squares(a[start : start + _NORM_CHUNK], None if b is None else b[start : start + _NORM_CHUNK])
    return float(np.sqrt(total))


def _squares(a: np.ndarray, b: np.ndarray | None) -> float:
    """Sum of squares of ``a - b`` (of ``a`` if ``b`` is None); in float64 where the tensors' dtype overflows.

    So the norm is infinite or NaN only if a value is: huge finite values (a reply scaled
    by 1e30) give a finite norm, which an update-norm bound can compare.
    """
    d = a if b is None else a - b
    with np.errstate(over="ignore", invalid="ignore"):
        squares = float(np.dot(d, d))
    if np.isfinite(squares) or d.dtype == np.float64:
        return squares
    d = a.astype(np.float64) if b is None else a.astype(np.float64) - b.astype(np.float64)
    return float(np.dot(d, d))
