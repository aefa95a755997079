"""Bounded influence: opt-in limits on what one client can do to the global model.

FedVSSL's loss-based weight (alpha > 0) is a softmax of losses the clients report about
themselves, and every reply moves the global model by as much as its update says. The
reply checks (``replies.py``) keep out what is malformed; these bounds limit what is
well-formed but extreme. All are off by default (``conf/strategy/fedvssl.yaml``):

- ``loss_clip: [lo, hi]``: reported losses are clipped into ``[lo, hi]`` before the
  weights, so a client's loss-based weight is at most ``exp(hi - lo)`` times another's.
- ``max_client_weight: c``: no client's weight exceeds ``c``; what is cut goes to the
  others in proportion to their weights (:func:`cap_weights`).
- ``max_update_norm`` (absolute) and ``max_update_norm_ratio`` (times the median update
  norm of the round's replies): a reply whose update norm exceeds the bound is rejected,
  or scaled down to it (``update_norm_action: reject | clip``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

NORM_ACTIONS = ("reject", "clip")


def _positive(value: object, key: str, minimum: float = 0.0) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > minimum
    if value is not None and not ok:
        raise ValueError(f"strategy.{key}={value} must be null or a number > {minimum:g}")


@dataclass(frozen=True)
class Bounds:
    """The limits on a reply, all off by default: see the module's doc and ``conf/strategy/fedvssl.yaml``."""

    max_num_examples: int | None = None  # a reply's num-examples above this is rejected
    loss_clip: tuple[float, float] | None = None  # reported losses clipped into [lo, hi] before the weights
    max_client_weight: float | None = None  # no client's aggregation weight above this
    max_update_norm: float | None = None  # absolute bound on a reply's update norm
    max_update_norm_ratio: float | None = None  # bound relative to the round's median update norm
    update_norm_action: str = "reject"  # reject | clip a reply beyond the update-norm bound

    def __post_init__(self) -> None:
        n = self.max_num_examples
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise ValueError(f"strategy.max_num_examples={n} must be null or an integer >= 1")
        clip = self.loss_clip
        if clip is not None:
            ok = isinstance(clip, list | tuple) and len(clip) == 2
            ok = ok and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in clip)
            if not (ok and clip[0] <= clip[1]):
                raise ValueError(f"strategy.loss_clip={clip} must be null or [lo, hi] with finite lo <= hi")
            object.__setattr__(self, "loss_clip", (float(clip[0]), float(clip[1])))
        cap = self.max_client_weight
        if cap is not None and not (isinstance(cap, int | float) and not isinstance(cap, bool) and 0 < cap <= 1):
            raise ValueError(f"strategy.max_client_weight={cap} must be null or in (0, 1]")
        _positive(self.max_update_norm, "max_update_norm")
        ratio = self.max_update_norm_ratio
        if ratio is not None and not (isinstance(ratio, int | float) and not isinstance(ratio, bool) and ratio >= 1):
            raise ValueError(f"strategy.max_update_norm_ratio={ratio} must be null or a number >= 1")
        if self.update_norm_action not in NORM_ACTIONS:
            raise ValueError(f"strategy.update_norm_action={self.update_norm_action!r} must be reject or clip")

    @classmethod
    def of(cls, settings: Mapping[str, object]) -> Bounds:
        """The bounds among a strategy's settings (the other keys are left alone)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})


def clip_losses(losses: Sequence[float], loss_clip: Sequence[float] | None) -> list[float]:
    """The losses clipped into ``[lo, hi]`` (unchanged without a range)."""
    if loss_clip is None:
        return [float(x) for x in losses]
    lo, hi = loss_clip
    return [float(min(max(x, lo), hi)) for x in losses]


def cap_weights(weights: Sequence[float], cap: float | None) -> np.ndarray:
    """Weights that sum to one with none above ``cap``, otherwise in the proportions of ``weights``.

    Each client above the cap gets the cap; the rest of the mass goes to the others in
    proportion to their weights, which may push another above the cap, and so on (at
    most one pass per client). With ``k`` clients and ``cap * k <= 1`` no such weights
    exist: every client gets ``1 / k``, the closest to the cap that still sums to one.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    k = w.size
    if cap is None or cap >= 1.0:
        return w
    if cap * k <= 1.0 + 1e-12:
        return np.full(k, 1.0 / k)
    original, capped = w.copy(), np.zeros(k, dtype=bool)
    while True:
        free = ~capped
        rest, share = 1.0 - cap * capped.sum(), original[free]
        w[free] = rest * share / share.sum() if share.sum() > 0 else rest / free.sum()
        w[capped] = cap
        over = free & (w > cap)
        if not over.any():
            return w
        capped |= over


def norm_bound(norms: Sequence[float], absolute: float | None, ratio: float | None) -> float | None:
    """The round's update-norm bound: the smaller of ``absolute`` and ``ratio`` times the median norm (None: no bound).

    A median of 0 (most replies did not move the model) sets no relative bound.
    """
    bounds = [] if absolute is None else [float(absolute)]
    median = float(np.median(norms)) if len(norms) else 0.0
    if ratio is not None and median > 0:
        bounds.append(float(ratio) * median)
    return min(bounds) if bounds else None


class ScaledUpdate(Mapping):
    """A reply's tensors with its update scaled by ``factor``: ``G + f (w - G)``, or ``f u`` for an update.

    Only floating-point tensors move; integer ones (BatchNorm counters) stay as sent.
    ``previous`` is the round's global model ``G`` where the reply holds weights, None
    where it holds updates (bfloat16 transfer). Computed when read, as the replies are.
    """

    def __init__(self, state: Mapping[str, np.ndarray], factor: float, previous: Mapping[str, np.ndarray] | None):
        self.state, self.factor, self.previous = state, np.float32(factor), previous

    def __getitem__(self, key: str) -> np.ndarray:
        a = self.state[key]
        if not np.issubdtype(a.dtype, np.floating):
            return a
        if self.previous is None:
            return a * self.factor
        g = np.asarray(self.previous[key])
        return g + (a - g) * self.factor

    def __iter__(self) -> Iterator[str]:
        return iter(self.state)

    def __len__(self) -> int:
        return len(self.state)
