"""Model-poisoning attacks by one client, to measure what the server's defences keep.

``fault.attack.kind`` turns the client with partition id ``fault.attack.client`` into an
attacker: it trains as usual, then changes its reply before it is sent. Used by
``benchmarks/poisoning.py`` and the tests of the server's checks; off (null) by default.

- ``signflip``: the update reversed and scaled, ``G - scale * (W - G)``;
- ``lie``: a random update of the honest update's norm, and a reported loss of 0, the
  lowest legal value, which wins the loss-based weight at alpha > 0;
- ``nonfinite``: the first floating-point tensor all NaN (not "nan", which YAML reads as a float).

Only floating-point tensors change; BatchNorm's integer counters travel as trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

KINDS = ("signflip", "lie", "nonfinite")


@dataclass(frozen=True)
class Attack:
    """``fault.attack``: which client attacks, how, and how hard (``signflip``'s factor)."""

    kind: str | None = None  # one of KINDS, or None: no attacker
    client: int = 0  # the attacker's partition id
    scale: float = 10.0

    def check(self, num_clients: int) -> None:
        """The settings, checked before any work (a ValueError names the key)."""
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"fault.attack.kind={self.kind} must be null or one of {', '.join(KINDS)}")
        if not (isinstance(self.client, int) and 0 <= self.client < num_clients):
            raise ValueError(f"fault.attack.client={self.client} must be a partition id in [0, {num_clients - 1}]")
        if not self.scale > 0:
            raise ValueError(f"fault.attack.scale={self.scale} must be > 0")

    def applies(self, partition_id: int) -> bool:
        return self.kind is not None and partition_id == self.client

    def __call__(
        self,
        trained: Mapping[str, np.ndarray],
        received: Mapping[str, np.ndarray],
        metrics: dict[str, float],
        seed: tuple[int, ...],
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The attacker's reply: its tensors and metrics after the attack (float32, as trained)."""
        floats = [k for k, v in trained.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]
        out = dict(trained)
        metrics = dict(metrics)
        if self.kind == "signflip":
            for k in floats:
                g = np.asarray(received[k], dtype=np.float32)
                out[k] = (g - np.float32(self.scale) * (np.asarray(trained[k]) - g)).astype(np.float32)
        elif self.kind == "lie":
            rng = np.random.default_rng(seed)
            noise = {k: rng.standard_normal(np.shape(trained[k])).astype(np.float32) for k in floats}
            honest = np.sqrt(sum(float(np.sum((np.asarray(trained[k]) - received[k]) ** 2)) for k in floats))
            size = np.sqrt(sum(float(np.sum(n.astype(np.float64) ** 2)) for n in noise.values()))
            for k in floats:
                out[k] = (np.asarray(received[k], dtype=np.float32) + noise[k] * np.float32(honest / size)).astype(
                    np.float32
                )
            metrics["train-loss"] = 0.0
        elif self.kind == "nonfinite" and floats:
            out[floats[0]] = np.full(np.shape(trained[floats[0]]), np.nan, dtype=np.float32)
        return out, metrics
