"""The run folder: every file a run writes or reads, in one place.

``main`` creates it, the ServerApp and its strategy write the global model and the
history into it, each ClientApp keeps its head there, and the evaluation writes the
results. Nothing else knows a file name inside it. Every write is atomic
(:mod:`fedvssl.core.files`), so a killed run leaves whole files only, which ``resume``
relies on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvssl.core.files import load_npz, load_tensors, save_npz, save_tensors, write_json, write_text


class RunFolder:
    """One run's folder (Hydra's run folder, ``run.dir``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "fedvssl.yaml"  # the resolved config the Flower apps run with
        self.checkpoints = self.root / "checkpoints"
        self.history = self.root / "history.json"
        self.history_csv = self.root / "history.csv"
        self.history_plot = self.root / "history.png"
        self.results = self.root / "results.json"
        self.results_table = self.root / "results.md"
        self.unusable = self.root / "unusable_videos.json"  # every video this run skipped, and why
        self.partition = self.root / "partition"  # the default partition.dir
        self.manifest = self.partition / "manifest.json"
        self.log = self.root / "main.log"
        self.tensorboard = self.root / "tensorboard"  # event files of logger=tensorboard
        self.flwr_home = self.root / "flwr"
        self._stopped = self.root / "stopped.txt"
        self.failure = self.root / "failed.txt"  # a sweep job's error line (the sweep went on)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    def checkpoint(self, server_round: int) -> Path:
        """The global model after ``server_round``."""
        return self.checkpoints / f"round-{server_round}.npz"

    def client_folder(self, partition_id: int) -> Path:
        return self.root / "clients" / f"client-{partition_id:04d}"

    # -- the global model and the history -----------------------------------------------
    def save_checkpoint(self, server_round: int, state: Mapping[str, np.ndarray]) -> None:
        save_npz(self.checkpoint(server_round), state)

    def checkpoint_rounds(self) -> list[int]:
        return sorted(int(f.stem.split("-")[1]) for f in self.checkpoints.glob("round-*.npz"))

    def prune_checkpoints(self, keep_last: int, keep_every: int) -> list[int]:
        """Delete checkpoints except the newest ``keep_last`` and every ``keep_every``-th round.

        Called after a round's checkpoint and history are both written, so the newest
        checkpoint (the final one at the end, and the one a resume starts from) always
        stays. Returns the rounds deleted.
        """
        rounds = self.checkpoint_rounds()
        keep = set(rounds[-keep_last:]) | {r for r in rounds if keep_every and r % keep_every == 0}
        gone = [r for r in rounds if r not in keep]
        for r in gone:
            self.checkpoint(r).unlink(missing_ok=True)
        return gone

    def write_history(self, history: list[dict]) -> None:
        write_json(self.history, history)

    def read_history(self) -> list[dict]:
        return json.loads(self.history.read_text()) if self.history.is_file() else []

    def completed_rounds(self) -> tuple[int, dict[str, np.ndarray] | None, list[dict]]:
        """The last round whose checkpoint and history entry are both on disk, its model, the history so far."""
        history = self.read_history()
        for i in range(len(history) - 1, -1, -1):
            checkpoint = self.checkpoint(history[i]["round"])
            if checkpoint.is_file():
                return int(history[i]["round"]), load_npz(checkpoint), history[: i + 1]
        return 0, None, []

    # -- why a run stopped ---------------------------------------------------------------
    def record_stop(self, reason: str) -> None:
        """Say why the federated run stopped (the strategy's side); ``main`` reports it."""
        write_text(self._stopped, reason.splitlines()[0] + "\n")

    def stop_reason(self) -> str | None:
        return self._stopped.read_text().strip() if self._stopped.is_file() else None

    def clear_stop(self) -> None:
        self._stopped.unlink(missing_ok=True)

    def record_failure(self, message: str) -> None:
        """A sweep job's one-line error, kept for the sweep's summary (``reports.sweep``)."""
        write_text(self.failure, message.splitlines()[0] + "\n")

    def failure_reason(self) -> str | None:
        return self.failure.read_text().strip() if self.failure.is_file() and not self.results.is_file() else None

    # -- clients' local state (their heads) ----------------------------------------------
    def _head_rounds(self, partition_id: int) -> list[int]:
        folder = self.client_folder(partition_id)
        if not folder.is_dir():
            return []
        return sorted(int(f.stem.split("-")[1]) for f in folder.glob("round-*.pt"))

    def _head(self, partition_id: int, server_round: int) -> Path:
        return self.client_folder(partition_id) / f"round-{server_round}.pt"

    def load_head_before(self, partition_id: int, server_round: int) -> dict[str, torch.Tensor] | None:
        """The client's newest head from *before* ``server_round``: a round redone after a
        crash starts from the same head as its first attempt."""
        earlier = [r for r in self._head_rounds(partition_id) if r < server_round]
        return load_tensors(self._head(partition_id, earlier[-1])) if earlier else None

    def save_head(self, partition_id: int, server_round: int, state: Mapping[str, torch.Tensor]) -> None:
        """Keep this round's head and the newest earlier one (at most two files per client)."""
        save_tensors(self._head(partition_id, server_round), state)
        earlier = [r for r in self._head_rounds(partition_id) if r < server_round]
        for r in earlier[:-1]:
            self._head(partition_id, r).unlink(missing_ok=True)

    # -- everything else ------------------------------------------------------------------
    def write_config(self, text: str) -> Path:
        write_text(self.config, text)
        return self.config

    def write_unusable(self, entries: list[dict[str, str]]) -> None:
        write_json(self.unusable, entries)

    def unusable_paths(self) -> set[str]:
        """The paths listed in ``unusable_videos.json`` (none when it is absent)."""
        listed = json.loads(self.unusable.read_text()) if self.unusable.is_file() else []
        return {entry["path"] for entry in listed if entry.get("path")}

    def write_results(self, results: dict[str, Any], table: str) -> None:
        write_json(self.results, results)
        write_text(self.results_table, table)
        self.failure.unlink(missing_ok=True)  # a job that failed once and finished when run again

    def pretraining_videos(self) -> int | None:
        """The number of partitioned pretraining videos, from this run's partition manifest."""
        return sum(json.loads(self.manifest.read_text())["counts"]) if self.manifest.is_file() else None
