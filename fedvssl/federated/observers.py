"""What the strategy asks of the two optional observers of a long run.

A ``logger`` (``logger=tensorboard``, :class:`fedvssl.reports.tensorboard.TensorBoardLog`)
gets every round's history entry; a ``monitor`` (``monitor.every``,
:class:`fedvssl.downstream.monitor.RetrievalMonitor`) scores the global model every few
rounds. Both are built outside the federated stage (by Hydra ``_target_``), so it never
imports the downstream evaluation or the reports: these protocols are all it knows of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import numpy as np


class Monitor(Protocol):
    """What the strategy asks of a monitor (``fedvssl.downstream.monitor.RetrievalMonitor``)."""

    every: int  # score the global model after every ``every``-th round

    def __call__(self, state: Mapping[str, np.ndarray]) -> dict:
        """Scores of the global model's shared tensors, as nested dicts of floats (JSON)."""

    def summary(self, results: dict) -> str:
        """The scores as one short console line."""


class RoundLogger(Protocol):
    """Where a run's progress goes as it happens (``fedvssl.reports.tensorboard.TensorBoardLog``)."""

    def log_round(self, entry: dict) -> None:
        """One round's history entry (per-client lists, round totals, the failures with their reasons)."""

    def log_monitor(self, server_round: int, results: dict) -> None:
        """A monitor's scores after ``server_round``, and the seconds it took (``time_s``)."""

    def close(self) -> None: ...


def leaves(tree: Mapping, prefix: str = "") -> Iterable[tuple[str, float]]:
    """The numbers of nested dicts, keyed by their slash-joined paths (a monitor's scores as Flower metrics)."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", float(value)
