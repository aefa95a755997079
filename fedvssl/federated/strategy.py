"""The FedVSSL strategy on Flower's Message API.

It subclasses Flower's ``FedAvg`` (public API only) and replaces sampling (seeded)
and aggregation, whose two decisions are hooks: ``client_weights`` (alpha) and
``server_step`` (beta), see ``aggregation.py``. It keeps the previous global model in memory for the beta
step and writes one checkpoint and one history entry per round.

Two optional observers watch a long run: a ``logger`` (``logger=tensorboard``) gets
every round's history entry, and a ``monitor`` (``monitor.every``) scores the global
model every few rounds through Flower's server-side ``evaluate_fn``. Both are built
outside this module (by Hydra ``_target_``), so the federated stage never imports
the downstream evaluation or the reports.
"""

from __future__ import annotations

import ctypes
import logging
import random
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.superlink.grid import InMemoryGrid
from tqdm import tqdm

from fedvssl.federated.aggregation import beta_step, client_weights, weighted_average
from fedvssl.federated.records import (
    BF16,
    TRANSFER_DTYPES,
    LazyArrays,
    is_in_memory,
    numpy_to_record,
    record_to_numpy,
)
from fedvssl.processes import rss_mb
from fedvssl.run_folder import RunFolder

log = logging.getLogger(__name__)
_NORM_CHUNK = 1 << 16  # elements per step of update_norm (256 KiB of float32)


# Freed heap a process may keep before release_heap gives it back (MiB): large enough
# that most rounds reuse their pages instead of faulting them in again, small beside a
# model-sized round (a client's peak is about 1.6 GiB at the paper's backbone).
HEAP_SLACK_MB = 256.0
_kept_from: float | None = None  # this process's own memory right after its last trim


def release_heap(slack_mb: float = HEAP_SLACK_MB) -> bool:
    """Give the freed heap back to the OS once it exceeds ``slack_mb`` (glibc's ``malloc_trim``).

    Every round frees several model-sized blocks (the replies, the aggregate, the
    serialized messages), which glibc keeps in its heaps and arenas instead of returning
    them; untrimmed, the server crept up by 18 MiB a round and a client process by 5
    (``benchmarks/rehearsal.py``). Trimming every round kept both flat but cost about
    0.7 s a round in the rehearsal, as each round then faulted its pages in anew. So the
    trim runs when the process's own memory (RSS less Ray's object-store pages) has grown
    ``slack_mb`` past what it was after the last trim: memory stays within that bound
    over any number of rounds. Returns whether it trimmed; elsewhere than glibc, nothing.
    """
    global _kept_from
    own = rss_mb() - object_store_mb()
    if _kept_from is not None and own - _kept_from < slack_mb:
        return False
    with suppress(OSError, AttributeError):  # not glibc (macOS, musl): no such function
        ctypes.CDLL(None).malloc_trim(0)
    _kept_from = rss_mb() - object_store_mb()
    return True


def object_store_mb() -> float:
    """Pages of Ray's shared-memory object store mapped into this process (``RssShmem``), in MiB; 0 off Linux.

    They count in this process's RSS and in that of every other Ray process that mapped
    them (Ray's documentation: subtract them from the RSS), and are bounded by the
    object store's size.
    """
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("RssShmem:")), 0.0)
    except OSError:
        return 0.0


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
        """One round's history entry (per-client lists, round totals)."""

    def log_monitor(self, server_round: int, results: dict) -> None:
        """A monitor's scores after ``server_round``, and the seconds it took (``time_s``)."""

    def close(self) -> None: ...


def short_reason(reason: str) -> str:
    """The innermost ``SomeError: message`` line of a (Ray-wrapped) client traceback."""
    lines = [line.strip(" '>") for line in reason.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): \S", line)]
    return (errors[-1] if errors else lines[0] if lines else "unknown error")[:500]


def update_norm(state: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray] | None = None) -> float:
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
                d = a[start : start + _NORM_CHUNK]
                if b is not None:
                    d = d - b[start : start + _NORM_CHUNK]
                total += float(np.dot(d, d))
    return float(np.sqrt(total))


def _single(records: dict, what: str, node: int):
    if len(records) != 1:
        raise ValueError(f"node {node} replied with {len(records)} {what}s, expected one")
    return next(iter(records.values()))


class FedVSSL(FedAvg):
    """FedAvg with loss-mixed client weights (alpha) and a server-side average (beta).

    ``share="backbone"`` is every FedVSSL variant: only backbone tensors travel and
    heads stay on the clients. ``share="full"`` is conventional FedAvg on the whole
    model (use it with alpha=0, beta=0).
    """

    @staticmethod
    def check_settings(
        alpha: float,
        beta: int,
        share: str,
        clients_per_round: int,
        num_clients: int,
        min_replies: int = 1,
        transfer_dtype: str = "float32",
        **_: object,
    ) -> None:
        """The strategy's settings, checked once: here, by ``__init__`` and by the config check before any work."""
        if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"strategy.alpha={alpha} must be in [0, 1]")
        if beta not in (0, 1) or isinstance(beta, bool):
            raise ValueError(f"strategy.beta={beta} must be 0 or 1")
        if share not in ("backbone", "full"):
            raise ValueError(f"strategy.share={share!r} must be 'backbone' or 'full'")
        if not (isinstance(clients_per_round, int) and 1 <= clients_per_round <= num_clients):
            raise ValueError(
                f"strategy.clients_per_round={clients_per_round} must be in [1, partition.num_clients={num_clients}]"
            )
        if not (isinstance(min_replies, int) and 1 <= min_replies <= clients_per_round):
            raise ValueError(
                f"strategy.min_replies={min_replies} must be in [1, clients_per_round={clients_per_round}]"
            )
        if transfer_dtype not in TRANSFER_DTYPES:
            raise ValueError(f"strategy.transfer_dtype={transfer_dtype!r} must be one of {', '.join(TRANSFER_DTYPES)}")

    def __init__(
        self,
        alpha: float,
        beta: int,
        share: str,
        clients_per_round: int,
        num_clients: int,
        seed: int,
        out_dir: str | None = None,
        min_replies: int = 1,
        start_round: int = 0,
        history: list[dict] | None = None,
        progress_rounds: int = 0,
        keep_last: int = 0,
        keep_every: int = 0,
        transfer_dtype: str = "float32",
        monitor: Monitor | None = None,
        logger: RoundLogger | None = None,
    ) -> None:
        self.check_settings(alpha, beta, share, clients_per_round, num_clients, min_replies, transfer_dtype)
        super().__init__(
            fraction_train=clients_per_round / num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=clients_per_round,
            min_available_nodes=num_clients,
        )
        self.alpha, self.beta, self.share = float(alpha), int(beta), share
        self.clients_per_round, self.num_clients, self.seed = clients_per_round, num_clients, seed
        self.min_replies = min_replies
        # How the shared tensors travel both ways (float32 or bfloat16); the server keeps and
        # aggregates float32, and checkpoints are float32.
        self.transfer_dtype = transfer_dtype
        # On resume, Flower's loop restarts at 1: rounds are shifted by the completed ones.
        self.start_round = start_round
        # Checkpoints, history and the reason for an early stop go to the run folder (none: memory only).
        self.run = RunFolder(out_dir) if out_dir else None
        # Checkpoint retention (checkpoints.keep_last / keep_every; keep_last=0 keeps every round).
        self.keep_last, self.keep_every = keep_last, keep_every
        self.history: list[dict] = list(history or [])
        # A round's files are written on one background thread while the next round trains
        # (0.2-0.4 s a round for a 133 MB checkpoint with its fsync); see save_round.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="fedvssl-save") if self.run else None
        self._saving: Future | None = None
        self._previous: Mapping[str, np.ndarray] | None = None
        self._in_memory = False  # NumPy-backed records: set per round by configure_train
        self._round: dict = {}
        self._partitions: dict[int, int] = {}  # node id -> partition id
        # A progress bar over all rounds (0: none, as in CI and non-interactive runs).
        self._bar = tqdm(total=progress_rounds, initial=start_round, desc="rounds") if progress_rounds else None
        self.monitor, self.logger = monitor, logger

    def close(self) -> None:
        """Finish the last round's files, close the logger and the progress bar (the ServerApp calls this at the end).

        A write that failed in the background raises here.
        """
        try:
            self.wait_saved()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
            if self.logger is not None:
                self.logger.close()
            if self._bar is not None:
                self._bar.close()

    def save_round(self, server_round: int, aggregate: Mapping[str, np.ndarray]) -> None:
        """Write the round's checkpoint, then the history that lists it, then apply retention, in the background.

        The order is what ``resume`` relies on (a round counts once both files exist), and
        every write is atomic, so a run killed mid-write resumes from the round before.
        The history is written from a copy of its list; an entry is changed later only
        after :meth:`wait_saved` (the monitor's scores), so the thread never reads a dict
        that is being changed.
        """
        self.wait_saved()
        history = list(self.history)

        def write() -> None:
            self.run.save_checkpoint(server_round, aggregate)
            self.run.write_history(history)
            if self.keep_last:
                self.run.prune_checkpoints(self.keep_last, self.keep_every)

        self._saving = self._writer.submit(write)

    def wait_saved(self) -> None:
        """Block until the last round's files are on disk; a failed write (disk full) raises here."""
        saving, self._saving = self._saving, None
        if saving is not None:
            saving.result()

    # FedVSSL's two decisions, as hooks: a new client weighting or server step is a
    # subclass that overrides one of them, plus a conf/strategy/<name>.yaml.
    def client_weights(self, losses: list[float], num_examples: list[int]) -> np.ndarray:
        """Aggregation weights from the replies' metrics: alpha * softmax(-loss) + (1 - alpha) * n_k / n."""
        return client_weights(losses, num_examples, self.alpha)

    def server_step(self, aggregate: dict[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
        """Combine the round's aggregate with the previous global model (beta=1: their mean, from round 2)."""
        return beta_step(aggregate, self._previous) if self.beta == 1 and server_round >= 2 else aggregate

    def partition_ids(self, grid: Grid, nodes: list[int]) -> dict[int, int]:
        """Ask every node once for its partition id (node ids are not partition ids)."""
        missing = [n for n in nodes if n not in self._partitions]
        if missing:
            asks = [
                Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
                for n in missing
            ]
            for reply in grid.send_and_receive(asks, timeout=600):
                if reply.has_error():
                    raise RuntimeError(
                        f"node {reply.metadata.src_node_id} did not report its partition id: {reply.error.reason}"
                    )
                record = _single(reply.content.metric_records, "MetricRecord", reply.metadata.src_node_id)
                self._partitions[reply.metadata.src_node_id] = int(record["partition-id"])
        return {n: self._partitions[n] for n in nodes}

    def sample(self, grid: Grid, server_round: int) -> list[int]:
        """Seeded uniform sampling of partition ids, so a run's choices repeat from its seed."""
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.num_clients:
                listed = self.partition_ids(grid, nodes)
                # A restarted SuperNode comes back under a new node id while its old id stays
                # listed until its heartbeats lapse: the node of a partition seen last wins.
                by_partition = {pid: node for node, pid in self._partitions.items() if node in listed}
                if len(by_partition) >= self.num_clients:
                    break
            log.info("waiting for nodes: %d of %d connected", len(nodes), self.num_clients)
            time.sleep(1)
        chosen = random.Random(f"{self.seed}/{server_round}").sample(sorted(by_partition), self.clients_per_round)
        return [by_partition[pid] for pid in chosen]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.start_round
        # G_{t-1}, needed by the beta step and the update norms: a view on the record's bytes
        # (float32 on the server), not a 133 MB copy.
        self._previous = LazyArrays(arrays)
        nodes = self.sample(grid, server_round)
        config["server-round"] = server_round
        config["transfer-dtype"] = self.transfer_dtype  # the clients reply in the same dtype
        # In Flower's in-process simulation the messages reach the clients through Ray only:
        # NumPy-backed records pass its object store without a pickled copy (see records.py),
        # and the clients reply in kind.
        self._in_memory = isinstance(grid, InMemoryGrid)
        if self.transfer_dtype != "float32" or self._in_memory != is_in_memory(arrays):
            arrays = numpy_to_record(self._previous, self.transfer_dtype, self._in_memory)
        self._round = {
            "start": time.perf_counter(),
            "started_at": time.time(),
            "bytes_sent": arrays.count_bytes() * len(nodes),
        }
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        # Kept so that aggregate_train can name the nodes that did not reply (the grid sets their ids).
        self._round["sent"] = [Message(content=record, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]
        return self._round["sent"]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.start_round
        replies = list(replies)
        valid, failed = [m for m in replies if not m.has_error()], [m for m in replies if m.has_error()]
        log.debug("round %d: %d replies, %d failures", server_round, len(valid), len(failed))
        # An error the SuperLink writes (a node that stopped sending heartbeats) comes from the
        # SuperLink itself: name the node the message went to.
        sent = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in self._round.get("sent", [])}
        failed_nodes = [sent.get(m.metadata.reply_to_message_id, int(m.metadata.src_node_id)) for m in failed]
        failures = [
            {"node_id": n, "partition_id": self._partitions.get(n, -1), "reason": short_reason(m.error.reason)}
            for n, m in zip(failed_nodes, failed, strict=True)
        ]
        replied = {sent.get(m.metadata.reply_to_message_id, int(m.metadata.src_node_id)) for m in replies}
        silent = [n for n in sent.values() if n not in replied]
        if silent:
            # Flower's send_and_receive returned at runtime.round_timeout_s without these replies.
            elapsed = time.perf_counter() - self._round.get("start", time.perf_counter())
            log.warning(
                "round %d timed out after %.0f s (runtime.round_timeout_s): no reply from client(s) %s",
                server_round,
                elapsed,
                [self._partitions.get(n, -1) for n in silent],
            )
            reason = f"no reply within runtime.round_timeout_s (round timed out after {elapsed:.0f} s)"
            failures += [{"node_id": n, "partition_id": self._partitions.get(n, -1), "reason": reason} for n in silent]
        for f in failures:
            log.warning("round %d: client %d failed: %s", server_round, f["partition_id"], f["reason"])
        if len(valid) < self.min_replies:
            self.wait_saved()  # the rounds before stay resumable
            first = failures[0]["reason"] if failures else "none"
            message = (
                f"round {server_round}: {len(valid)} of {len(valid) + len(failures)} clients replied, fewer than "
                f"strategy.min_replies={self.min_replies}; first failure: {first}"
            )
            if self.run is not None:
                self.run.record_stop(message)
            raise RuntimeError(message)
        # Replies arrive in completion order; sorting by partition id makes the float sums,
        # and so the global model, independent of timing (resume relies on this).
        pairs = [(_single(m.content.metric_records, "MetricRecord", m.metadata.src_node_id), m) for m in valid]
        pairs.sort(key=lambda pair: int(pair[0].get("partition-id", -1)))
        metrics, valid = [p[0] for p in pairs], [p[1] for p in pairs]
        losses = [float(m["train-loss"]) for m in metrics]
        counts = [int(m["num-examples"]) for m in metrics]
        weights = np.asarray(self.client_weights(losses, counts), dtype=np.float64)
        arrays = [_single(m.content.array_records, "ArrayRecord", m.metadata.src_node_id) for m in valid]
        views = [LazyArrays(a) for a in arrays]
        if self.transfer_dtype == BF16:
            # The replies are updates (records.reply_record): sum_k w_k (G + u_k) is
            # (sum_k w_k) G + sum_k w_k u_k, one addition of G instead of one per client.
            mean, total = weighted_average(views, weights), float(weights.sum())
            averaged = {
                k: (self._previous[k] * np.float32(total) + v if v.dtype == np.float32 else v) for k, v in mean.items()
            }
            client_norms = [update_norm(v) for v in views]
        else:
            averaged = weighted_average(views, weights)
            client_norms = [update_norm(v, self._previous) for v in views]
        aggregate = self.server_step(averaged, server_round)
        entry = {
            "round": server_round,
            "partition_ids": [int(m.get("partition-id", -1)) for m in metrics],
            "node_ids": [int(m.metadata.src_node_id) for m in valid],
            "num_examples": counts,
            "train_loss": losses,
            "weights": weights.tolist(),
            "failures": failures,
            "bytes_sent": self._round.get("bytes_sent", 0),
            "bytes_received": sum(a.count_bytes() for a in arrays),
            "update_norm": update_norm(aggregate, self._previous),
            # Per client, in partition-id order like the lists above: what it sent back, and how
            # far its model moved from the global one it started from.
            "client_bytes_received": [a.count_bytes() for a in arrays],
            "client_update_norm": client_norms,
            "time_s": time.perf_counter() - self._round.get("start", time.perf_counter()),
            # Wall clock at the round's start: the gaps between rounds (checkpoint, history,
            # monitor, Flower's loop) show as the difference of consecutive starts less time_s.
            "started_at": self._round.get("started_at", time.time()),
            "server_rss_mb": rss_mb(),
            "server_shm_mb": object_store_mb(),
        }
        entry.update(
            {
                k: [float(m[k]) for m in metrics]
                for k in metrics[0]
                if k not in ("train-loss", "num-examples", "partition-id")
            }
        )
        self.history.append(entry)
        # Flower's loop holds this round's replies until the next round's have come back: let
        # go of their tensors now, so that neither the heap nor (in the simulation) Ray's object
        # store keeps two rounds of replies.
        for a in arrays:
            a.clear()
        if self.run is not None:
            self.save_round(server_round, aggregate)
        if self.logger is not None:
            self.logger.log_round(entry)
        mean_loss = float(np.dot(weights, losses))
        log.info(
            "round %d: loss %.4f (weighted) over %d clients, %d failed; weights %s, losses %s",
            server_round,
            mean_loss,
            len(losses),
            len(failed),
            np.round(weights, 4).tolist(),
            np.round(losses, 4).tolist(),
        )
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{mean_loss:.3f}")
            self._bar.update(1)
        # What was freed since the last round (the previous round's replies and messages,
        # this round's temporaries) goes back to the OS once it passes a bound; see release_heap.
        release_heap()
        return numpy_to_record(aggregate, in_memory=self._in_memory), MetricRecord({"train-loss": mean_loss})

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's server-side ``evaluate_fn``: the monitor's scores after every ``monitor.every``-th round.

        Flower calls it with round 0 (the initial model) and after every round. The scores
        go into the round's history entry (so they survive a resume), to the logger, and
        to the console as one line; a monitor that raises is logged and recorded as the
        round's ``monitor.error``, and the run goes on. After a resume, round 0 is the last
        completed round: it is scored if it was due and the run stopped before its scores
        were written.
        """
        server_round += self.start_round
        if self.monitor is None or server_round == 0 or server_round % self.monitor.every:
            return None
        entry = next((e for e in reversed(self.history) if e.get("round") == server_round), None)
        if entry is None or "monitor" in entry:
            return None
        self.wait_saved()  # the entry gets the scores below: not while the writer reads it
        start = time.perf_counter()
        try:
            results = self.monitor(record_to_numpy(arrays))
        except Exception as e:  # a failed look (out of GPU memory, say) must not end a days-long run
            reason = short_reason(f"{type(e).__name__}: {e}")
            log.warning("round %d: the retrieval monitor failed, training goes on: %s", server_round, reason)
            entry["monitor"] = {"error": reason}
            if self.run is not None:
                self.run.write_history(self.history)
            return None
        seconds = time.perf_counter() - start
        entry["monitor"] = {**results, "time_s": round(seconds, 2)}
        if self.run is not None:
            self.run.write_history(self.history)
        if self.logger is not None:
            self.logger.log_monitor(server_round, entry["monitor"])
        # One line per monitored round, on the console and in main.log (Hydra's handlers).
        log.info("round %d: %s (%.1f s)", server_round, self.monitor.summary(results), seconds)
        return MetricRecord(dict(_leaves(results)))


def _leaves(tree: Mapping, prefix: str = "") -> Iterable[tuple[str, float]]:
    """The numbers of nested dicts, keyed by their slash-joined paths."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", float(value)
