"""FedProx's proximal term on the client (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

Each local step minimises the pretext loss plus ``mu / 2 * ||w - w_global||^2``, where ``w``
runs over the model's *shared* parameters (the backbone: the heads never leave the client,
so they have no global value to stay near) and ``w_global`` is the global model the round
started from. It is added to whatever loss the pretext task computes, so it holds for every
pretext task (CtP, VCOP, Speed). ``mu`` comes from the server with each round
(``strategy.rule.proximal_mu``, sent as ``proximal-mu`` by Flower's FedProx settings).
BatchNorm's running statistics are buffers, not parameters: no gradient reaches them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class ProximalTerm:
    """``mu / 2 * sum ||p - p_global||^2`` over the named parameters, from their values when it is made."""

    def __init__(self, model: torch.nn.Module, shared: Iterable[str], mu: float) -> None:
        if not (isinstance(mu, int | float) and math.isfinite(mu) and mu >= 0):
            raise ValueError(f"proximal-mu={mu} must be a finite number >= 0")
        shared = set(shared)
        self.mu = float(mu)
        self.pairs = [(p, p.detach().clone()) for name, p in model.named_parameters() if name in shared]

    def __call__(self) -> torch.Tensor:
        """The term, in float32, differentiable in the parameters."""
        total = sum(((p.float() - anchor.float()) ** 2).sum() for p, anchor in self.pairs)
        return 0.5 * self.mu * total
