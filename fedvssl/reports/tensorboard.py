"""A run's progress as TensorBoard scalars, written while it runs (``logger=tensorboard``).

The ServerApp builds :class:`TensorBoardLog` from ``conf/logger/tensorboard.yaml`` and
hands it to the strategy, which passes it every round's history entry and every
monitor result. The event files go to the run folder's ``tensorboard/``:

- ``<metric>/client-<partition id>``: each client's training loss, aggregation
  weight, sample count, update norm, bytes sent back, training time (and whatever
  else the client reports, such as the pretext accuracy), at the round it trained in;
- ``round/<metric>``: the weighted loss, the round's wall time, bytes both ways, the
  global model's update norm, the server's memory, clients and failures;
- ``retrieval/<dataset>/R@<k>``: the monitor's scores of the global model, and the
  same tags in the run ``random_init`` (a subfolder), so that TensorBoard draws the
  control in the same chart; ``retrieval/time_s``: how long the monitor took.

The Custom Scalars dashboard shows every client of a metric in one chart.
This module is imported only when ``logger=tensorboard`` is chosen.
"""

from __future__ import annotations

from pathlib import Path

from fedvssl.downstream.monitor import GLOBAL

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:  # torch's own message does not say how to get it
    raise ImportError("logger=tensorboard needs the tensorboard package: pip install 'fedvssl[tensorboard]'") from None

# Round totals of a history entry, under round/<name>.
ROUND_SCALARS = ("time_s", "bytes_sent", "bytes_received", "update_norm", "server_rss_mb")
# A DP run's privacy after each round (optimizers.ServerOptimizer.privacy_entry), under privacy/<name>.
PRIVACY_SCALARS = ("epsilon", "delta", "noise_multiplier", "clipping_norm", "sampling_rate")
# Per-client lists that are not measurements.
NOT_SCALARS = ("partition_ids", "node_ids")


def _per_client(entry: dict) -> dict[str, list[float]]:
    """The entry's per-client lists of numbers (one value per replying client), by tag name."""
    n = len(entry["partition_ids"])
    found = {}
    for key, values in entry.items():
        if key in NOT_SCALARS or not isinstance(values, list) or len(values) != n:
            continue
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            found[key.removeprefix("client_").replace("-", "_")] = [float(v) for v in values]
    return found


class TensorBoardLog:
    """Scalars per round and per client, and the monitor's R@k, in ``log_dir``."""

    def __init__(self, log_dir: str | Path, start_round: int = 0, flush_secs: int = 30) -> None:
        # A resumed run redoes the rounds after its last completed one: from that step on,
        # TensorBoard drops what the interrupted attempt wrote.
        self._purge = start_round + 1 if start_round else None
        self.log_dir, self.flush_secs = Path(log_dir), flush_secs
        self.writer = SummaryWriter(str(self.log_dir), purge_step=self._purge, flush_secs=flush_secs)
        self._controls: dict[str, SummaryWriter] = {}  # one TensorBoard run per control backbone
        self._layout = False

    def log_round(self, entry: dict) -> None:
        step = int(entry["round"])
        per_client = _per_client(entry)
        for name, values in per_client.items():
            for pid, value in zip(entry["partition_ids"], values, strict=True):
                self.writer.add_scalar(f"{name}/client-{int(pid):04d}", value, step)
        weights, losses = per_client.get("weights"), per_client.get("train_loss")
        if weights and losses:
            self.writer.add_scalar("round/train_loss", sum(w * x for w, x in zip(weights, losses, strict=True)), step)
        for group, keys in (("round", ROUND_SCALARS), ("privacy", PRIVACY_SCALARS)):
            for key in keys:
                if key in entry:
                    self.writer.add_scalar(f"{group}/{key}", float(entry[key]), step)
        self.writer.add_scalar("round/clients", len(entry["partition_ids"]), step)
        self.writer.add_scalar("round/failures", len(entry.get("failures", [])), step)
        # Each failure's one-line reason (a crash, a timeout, a rejected reply), under the TEXT tab.
        reasons = [f"client {f.get('partition_id', -1)}: {f.get('reason', '')}" for f in entry.get("failures", [])]
        if reasons:
            self.writer.add_text("round/failures", "\n\n".join(reasons), step)
        if not self._layout:
            # Custom Scalars: one chart per metric with a line per client.
            charts = {name: ["Multiline", [rf"^{name}/client-"]] for name in per_client}
            self.writer.add_custom_scalars({"clients": charts})
            self._layout = True
        self.writer.flush()  # rounds are minutes apart: show each one as soon as it is done

    def log_monitor(self, server_round: int, results: dict) -> None:
        for backbone, per_dataset in results.items():
            if not isinstance(per_dataset, dict):  # the monitor's own time_s
                self.writer.add_scalar(f"retrieval/{backbone}", float(per_dataset), server_round)
                continue
            writer = self.writer if backbone == GLOBAL else self._control(backbone)
            for dataset, scores in per_dataset.items():
                for metric, value in scores.items():
                    writer.add_scalar(f"retrieval/{dataset}/{metric}", float(value), server_round)
            writer.flush()

    def _control(self, name: str) -> SummaryWriter:
        if name not in self._controls:
            self._controls[name] = SummaryWriter(
                str(self.log_dir / name), purge_step=self._purge, flush_secs=self.flush_secs
            )
        return self._controls[name]

    def close(self) -> None:
        for writer in (self.writer, *self._controls.values()):
            writer.close()
