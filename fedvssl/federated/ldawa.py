"""L-DAWA: layer-wise divergence-aware weight aggregation, as a FedVSSL strategy (``strategy=ldawa``).

The arithmetic (the functions) is free of Flower so it can be tested by hand; :class:`LDAWA`
is FedVSSL with its ``combine`` hook replaced by it.

Source: Y. A. U. Rehman, Y. Gao, P. P. B. de Gusmão, M. Alibeigi, J. Shen, N. D. Lane,
"L-DAWA: Layer-wise Divergence Aware Weight Aggregation in Federated Self-Supervised
Visual Representation Learning", ICCV 2023 (arXiv:2307.07393), and the authors' server
code (``L-DAWA-Agg.py`` in their repository ``yasar-rehman/L-DAWA``), which fixes the
details the paper leaves open.

For every layer ``l`` (here: every tensor of the shared state, as in the authors' code)
and each of the round's ``K`` replies ``k``, the weight is the cosine of the angle between
the client's layer and the global model's layer it started from:

    delta_k^l = <w_k^l, w_g^l> / (||w_k^l|| * ||w_g^l||)
    w_g^l (new) = sum_k  delta_k^l / K * w_k^l            (normalize=False: the paper's)
    w_g^l (new) = sum_k  delta_k^l / sum_j delta_j^l * w_k^l    (normalize=True)

Choices, each with its reason:

- **Weights, not updates.** The cosine is between the client's layer weights and the
  global layer weights, as in the paper and the authors' code. Where the replies are
  updates (``strategy.transfer_dtype=bfloat16``), the client's layer is rebuilt as
  ``w_g + u_k`` first (``updates=True``), so both transfer dtypes weigh the same thing.
- **Divided by K (default).** The authors' code divides the sum by the number of clients,
  not by the sum of the cosines: a layer's weights then sum to the mean cosine, at most 1,
  and the global layer shrinks a little towards zero each round. ``normalize=True`` makes
  each layer a convex combination of the clients' layers instead.
- **Sample counts are ignored**: the cosine takes the place of FedAvg's ``n_k / n``.
- **Cosines are clipped to [0, 1].** Above 1 is rounding (the authors' code clips it too).
  A negative cosine would multiply the client's layer by a negative number, flipping its
  sign rather than lowering its say; it counts as 0 (the authors' code keeps it; after one
  local epoch from the global model a cosine below 0 means the layer diverged).
- **A zero layer has no angle.** Where the client's or the global layer is all zeros
  (BatchNorm biases and running means start so), ``delta = 1``: the layer is averaged
  plainly (the authors' code divides by zero on a zero global layer). If every client's
  cosine of a layer is 0 under ``normalize=True``, that layer too is averaged plainly.
- **Integer tensors and scalars** (BatchNorm's ``num_batches_tracked``) are averaged plainly
  and rounded, as the authors' code leaves 0-d tensors unweighted.

Sums run in float64 one tensor and one cache-sized chunk at a time, like ``aggregation.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedvssl.federated.aggregation import weighted_average
from fedvssl.federated.records import BF16
from fedvssl.federated.replies import Reply
from fedvssl.federated.strategy import FedVSSL

State = Mapping[str, np.ndarray]
_CHUNK = 1 << 17  # elements per float64 chunk (1 MiB)


def is_layer(value: np.ndarray) -> bool:
    """Whether a tensor is weighted by its cosine: a floating-point tensor with at least one axis."""
    return np.issubdtype(value.dtype, np.floating) and np.ndim(value) > 0


def _cosine(client: np.ndarray, glob: np.ndarray, update: bool) -> float:
    """cos(client, global) in float64, chunk by chunk; ``update``: the client's layer is ``glob + client``."""
    c, g = np.asarray(client).reshape(-1), np.asarray(glob).reshape(-1)
    dot = cc = gg = 0.0
    for start in range(0, g.size, _CHUNK):
        gs = g[start : start + _CHUNK].astype(np.float64)
        cs = c[start : start + _CHUNK].astype(np.float64)
        if update:
            cs += gs
        dot += float(np.dot(cs, gs))
        cc += float(np.dot(cs, cs))
        gg += float(np.dot(gs, gs))
    if cc == 0.0 or gg == 0.0:
        return 1.0  # no angle: average plainly
    return float(np.clip(dot / np.sqrt(cc * gg), 0.0, 1.0))


def layer_cosines(states: Sequence[State], global_state: State, updates: bool = False) -> dict[str, np.ndarray]:
    """``delta_k^l`` for every shared tensor: ``{key: [delta_1, ..., delta_K]}`` (ones for integer tensors and scalars).

    ``updates=True``: the clients' floating-point tensors are updates ``u_k`` and their layers ``w_g + u_k``.
    """
    if not states:
        raise ValueError("nothing to aggregate")
    out = {}
    for key, glob in global_state.items():
        if is_layer(np.asarray(glob)):
            out[key] = np.array([_cosine(s[key], glob, updates) for s in states], dtype=np.float64)
        else:
            out[key] = np.ones(len(states), dtype=np.float64)
    return out


def layer_weights(cosines: Mapping[str, np.ndarray], normalize: bool = False) -> dict[str, np.ndarray]:
    """Per tensor, the clients' aggregation weights: ``delta / K``, or ``delta / sum(delta)`` when ``normalize``."""
    out = {}
    for key, delta in cosines.items():
        delta = np.asarray(delta, dtype=np.float64)
        if normalize:
            total = delta.sum()
            out[key] = delta / total if total > 0 else np.full(delta.size, 1.0 / delta.size)
        else:
            out[key] = delta / delta.size
    return out


def layer_weighted_average(
    states: Sequence[State], weights: Mapping[str, np.ndarray], base: State | None = None
) -> dict[str, np.ndarray]:
    """``sum_k weights[key][k] * states[k][key]`` for every key, dtypes kept (``weighted_average`` per tensor).

    ``base``: the states' floating-point tensors are updates from ``base`` (bfloat16 replies); the
    result is then ``sum_k w_k (base + u_k) = (sum_k w_k) base + sum_k w_k u_k`` for those tensors.
    """
    out = {}
    for key, w in weights.items():
        mean = weighted_average([{key: s[key]} for s in states], list(w))[key]
        if base is not None and mean.dtype == np.float32:
            mean = np.asarray(base[key]) * np.float32(np.sum(w)) + mean
        out[key] = mean
    return out


def ldawa_aggregate(
    states: Sequence[State], global_state: State, normalize: bool = False, updates: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The new global model by L-DAWA and the per-tensor weights that made it (``{key: [w_1, ..., w_K]}``)."""
    weights = layer_weights(layer_cosines(states, global_state, updates), normalize)
    return layer_weighted_average(states, weights, global_state if updates else None), weights


class LDAWA(FedVSSL):
    """FedVSSL whose aggregate is L-DAWA's (``normalize``: see the module); the beta step still applies after it.

    The history's ``weights`` are the plain ``1/K`` (the round's loss is their mean); the
    per-layer weights are summarised per client as ``layer_cosine_mean`` and ``layer_cosine_min``.
    """

    @staticmethod
    def check_settings(*args: object, normalize: bool = False, **settings: object) -> None:
        """FedVSSL's settings; ``normalize`` is L-DAWA's own (and ``dp`` is not one: see the docs)."""
        if not isinstance(normalize, bool):
            raise ValueError(f"strategy.normalize={normalize!r} must be true or false")
        FedVSSL.check_settings(*args, **settings)

    def __init__(self, normalize: bool = False, **settings: object) -> None:
        super().__init__(**settings)
        self.normalize = bool(normalize)

    def weigh(self, replies: list[Reply]) -> np.ndarray:
        return np.full(len(replies), 1.0 / len(replies)) if replies else np.zeros(0)

    def combine(self, replies: list[Reply], weights: np.ndarray) -> dict[str, np.ndarray]:
        states = [r.state for r in replies]
        updates = self.transfer_dtype == BF16  # bfloat16 replies are updates (records.reply_record)
        cosines = layer_cosines(states, self._previous, updates)
        layers = np.array([c for k, c in cosines.items() if is_layer(np.asarray(self._previous[k]))])
        self._round["layer_cosines"] = layers  # [layers, K]
        base = self._previous if updates else None
        return layer_weighted_average(states, layer_weights(cosines, self.normalize), base)

    def history_entry(self, server_round: int, replies: list[Reply], weights: np.ndarray, failures, aggregate):
        entry = super().history_entry(server_round, replies, weights, failures, aggregate)
        layers = self._round.get("layer_cosines")
        if layers is not None and layers.size:
            entry["layer_cosine_mean"] = layers.mean(axis=0).tolist()
            entry["layer_cosine_min"] = layers.min(axis=0).tolist()
        return entry
