"""The FedVSSL strategy on Flower's Message API.

It subclasses Flower's ``FedAvg`` (public API only) and replaces sampling (seeded)
and aggregation, whose three decisions are hooks: ``client_weights`` (alpha),
``combine`` (the weighted average) and ``server_step`` (beta), see ``aggregation.py``.
It keeps the previous global model in memory for the beta step and writes one
checkpoint and one history entry per round.

A round's aggregation runs in named steps: :meth:`FedVSSL.receive` (failures, timeouts,
the replies that count, in partition order), :meth:`FedVSSL.weigh`, :meth:`FedVSSL.combine`,
:meth:`FedVSSL.server_step`, :meth:`FedVSSL.history_entry` and :meth:`FedVSSL.finish_round`
(files, logger, console, memory).

Two optional observers watch a long run (``observers.py``): a ``logger`` gets every
round's history entry, and a ``monitor`` scores the global model every few rounds
through Flower's server-side ``evaluate_fn``.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields
from numbers import Integral

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.superlink.grid import InMemoryGrid
from tqdm import tqdm

from fedvssl.core.processes import object_store_mb, release_heap, rss_mb
from fedvssl.core.run_folder import RunFolder
from fedvssl.federated.aggregation import beta_step, client_weights, update_norm, weighted_average
from fedvssl.federated.bounds import Bounds, ScaledUpdate, cap_weights, clip_losses, norm_bound
from fedvssl.federated.observers import Monitor, RoundLogger, leaves
from fedvssl.federated.records import (
    BF16,
    TRANSFER_DTYPES,
    LazyArrays,
    is_in_memory,
    numpy_to_record,
    record_to_numpy,
)
from fedvssl.federated.replies import Expected, Rejected, Reply, check, failure, short_reason, single, sort_out

log = logging.getLogger(__name__)


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
        **others: object,
    ) -> None:
        """The strategy's settings, checked once: here, by ``__init__`` and by the config check before any work.

        Of ``others``, the bounds on a reply are checked (``bounds.Bounds``). Any other key is not a
        setting of this strategy (a subclass takes its own keys before calling this): it is named
        here, rather than failing as a ``TypeError`` when the ServerApp builds the strategy.
        """
        Bounds.of(others)
        # The ServerApp's own arguments (seed, out_dir, history, ...) may come along, from a subclass's __init__.
        taken = {f.name for f in fields(Bounds)} | set(inspect.signature(FedVSSL.__init__).parameters)
        unknown = sorted(set(others) - taken - {"_recursive_", "_convert_"})
        if unknown:
            hint = ""
            if unknown[0] == "dp":  # the one a user is most likely to add to the wrong strategy
                hint = (
                    ": Flower's DP wrappers wrap the server-optimiser strategies (strategy=fedavg_dp_low, or "
                    "+strategy/dp=<name> with strategy=fedavgm, fedadam, fedyogi, fedadagrad or fedprox)"
                )
            raise ValueError(f"strategy.{unknown[0]} is not a setting of this strategy{hint}")
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
        partition_sizes: Mapping[int, int] | None = None,
        published_partitions: bool = False,
        **bounds: object,
    ) -> None:
        self.check_settings(alpha, beta, share, clients_per_round, num_clients, min_replies, transfer_dtype)
        # Opt-in limits on what one reply can do (loss clipping, weight cap, update-norm bound).
        self.bounds = Bounds(**bounds)
        # Videos listed per partition id, which bound a reply's num-examples: in the simulation,
        # where the clients read the same files, and with published partitions, which every
        # node holds alike (elsewhere a SuperNode may read its own partition-dir).
        self.partition_sizes, self.published_partitions = dict(partition_sizes or {}), published_partitions
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
        self._round: dict = {}  # this round's messages, times, and what its replies must match
        self._partitions: dict[int, int] = {}  # node id -> partition id
        self._left_out: dict[int, str] = {}  # node id -> why it reported no partition id
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
        """Ask every node once for its partition id (node ids are not partition ids).

        A node whose answer is no partition id of this run is left out of the sampling, with
        a warning, and not asked again (a restarted SuperNode comes back under a new id).
        """
        missing = [n for n in nodes if n not in self._partitions and n not in self._left_out]
        if missing:
            asks = {
                n: Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY)
                for n in missing
            }
            replies = grid.send_and_receive(list(asks.values()), timeout=600)
            asked = {m.metadata.message_id: n for n, m in asks.items()}  # the grid set the ids
            for reply in replies:
                node = int(reply.metadata.src_node_id)
                if reply.has_error():  # written by the SuperLink: named by the message it answers
                    node = asked.get(reply.metadata.reply_to_message_id, node)
                try:
                    self._partitions[node] = self.reported_partition(reply)
                except Exception as e:
                    self._left_out[node] = short_reason(f"{type(e).__name__}: {e}")
                    log.warning("node %d is left out: no partition id of this run (%s)", node, self._left_out[node])
        return {n: self._partitions[n] for n in nodes if n in self._partitions}

    def reported_partition(self, reply: Message) -> int:
        """The partition id a node's answer to the query names; an error if it names none of this run."""
        if reply.has_error():
            raise RuntimeError(reply.error.reason)
        pid = single(reply.content.metric_records, "MetricRecord", reply.metadata.src_node_id)["partition-id"]
        if isinstance(pid, bool) or not isinstance(pid, Integral) or not 0 <= pid < self.num_clients:
            raise ValueError(f"partition-id={pid!r:.40} is not in 0..{self.num_clients - 1}")
        return int(pid)

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
            left_out = f", {len(self._left_out)} left out (see above)" if self._left_out else ""
            log.info("waiting for nodes: %d of %d connected%s", len(nodes), self.num_clients, left_out)
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
            "expected": self.expected(),
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
        self._round["round"] = server_round
        accepted, failures = self.receive(server_round, replies)
        weights = self.weigh(accepted)
        aggregate = self.server_step(self.combine(accepted, weights), server_round)
        entry = self.history_entry(server_round, accepted, weights, failures, aggregate)
        self.finish_round(entry, replies, aggregate)
        record = numpy_to_record(aggregate, in_memory=self._in_memory)
        return record, MetricRecord({"train-loss": float(np.dot(weights, entry["train_loss"]))})

    def expected(self) -> Expected:
        """What the round's replies must match: the global model's tensors, and the bounds on num-examples."""
        sizes = self.partition_sizes if self._in_memory or self.published_partitions else None
        return Expected.of(
            self._previous, self.num_clients, partition_sizes=sizes, max_num_examples=self.bounds.max_num_examples
        )

    def receive(self, server_round: int, replies: list[Message]) -> tuple[list[Reply], list[dict]]:
        """The replies that count, in partition-id order, and the round's failures.

        A failure is a client whose reply is an error, that did not reply in time, or whose
        reply fails a check (:meth:`accept`) or the update-norm bound (:meth:`bound_updates`).
        Fewer than ``min_replies`` replies that count stop the run (:meth:`stop`). Replies
        arrive in completion order; sorting by partition id makes the float sums, and so
        the global model, independent of timing (resume relies on this).
        """
        sent = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in self._round.get("sent", [])}
        elapsed = time.perf_counter() - self._round.get("start", time.perf_counter())
        reason = f"no reply within runtime.round_timeout_s (round timed out after {elapsed:.0f} s)"
        valid, failures, silent = sort_out(replies, sent, self._partitions, reason)
        log.debug("round %d: %d replies, %d failures", server_round, len(valid), len(replies) - len(valid))
        if silent:
            # Flower's send_and_receive returned at runtime.round_timeout_s without these replies.
            log.warning(
                "round %d timed out after %.0f s (runtime.round_timeout_s): no reply from client(s) %s",
                server_round,
                elapsed,
                [self._partitions.get(n, -1) for n in silent],
            )
        accepted: list[Reply] = []
        for node, message in valid:
            checked = self.accept(node, message, {r.partition_id for r in accepted})
            (accepted if isinstance(checked, Reply) else failures).append(checked)
        accepted, beyond = self.bound_updates(accepted)
        failures += beyond
        for f in failures:
            log.warning("round %d: client %d failed: %s", server_round, f["partition_id"], f["reason"])
        if len(accepted) < self.min_replies:
            self.stop(server_round, len(accepted), failures)
        accepted.sort(key=lambda r: r.partition_id)
        return accepted, failures

    def accept(self, node: int, message: Message, taken: set[int]) -> Reply | dict:
        """The reply, checked against the round's global model (``replies.check``), or the failure it is.

        Nothing a client sends raises here: whatever fails is that client's failure, with
        the reason. ``taken``: the partitions that already replied this round.
        """
        try:
            if "expected" not in self._round:
                raise Rejected("no round was configured for it")
            previous = None if self.transfer_dtype == BF16 else self._previous  # bfloat16 replies are updates
            reply = check(message, self._round["expected"], self._partitions, previous)
            if reply.partition_id in taken:
                raise Rejected(f"partition {reply.partition_id} already replied in this round")
            return reply
        except Rejected as e:
            reason = f"rejected: {e}"
        except Exception as e:  # a reply malformed in a way no check foresaw
            reason = f"rejected: unreadable reply ({type(e).__name__}: {e})"
        return failure(node, self._partitions, reason.splitlines()[0][:500])

    def bound_updates(self, replies: list[Reply]) -> tuple[list[Reply], list[dict]]:
        """The replies within the update-norm bound (``strategy.max_update_norm[_ratio]``), and a failure per other.

        With ``update_norm_action=clip`` none fails: a reply beyond the bound has its update
        scaled down to it.
        """
        b = self.bounds
        bound = norm_bound([r.norm for r in replies], b.max_update_norm, b.max_update_norm_ratio)
        self._round["norm_bound"] = bound
        if bound is None:
            return replies, []
        kept, failures = [], []
        for r in replies:
            if r.norm <= bound:
                kept.append(r)
            elif b.update_norm_action == "clip":
                r.scale = bound / r.norm
                r.state = ScaledUpdate(r.state, r.scale, None if self.transfer_dtype == BF16 else self._previous)
                kept.append(r)
            else:
                reason = (
                    f"rejected: update norm {r.norm:.4g} exceeds the bound {bound:.4g} (strategy.max_update_norm="
                    f"{b.max_update_norm}, max_update_norm_ratio={b.max_update_norm_ratio} of the median)"
                )
                failures.append(failure(r.node_id, self._partitions, reason))
        return kept, failures

    def stop(self, server_round: int, replied: int, failures: list[dict]) -> None:
        """End the run: fewer than ``min_replies`` clients counted in the round. The reason goes to the run folder."""
        self.wait_saved()  # the rounds before stay resumable
        first = failures[0]["reason"] if failures else "none"
        message = (
            f"round {server_round}: {replied} of {replied + len(failures)} clients replied, fewer than "
            f"strategy.min_replies={self.min_replies}; first failure: {first}"
        )
        if self.run is not None:
            self.run.record_stop(message)
        raise RuntimeError(message)

    def weigh(self, replies: list[Reply]) -> np.ndarray:
        """The aggregation weights of the round's replies: the ``client_weights`` hook, within the bounds.

        The losses are clipped (``strategy.loss_clip``) before the weights, and the weights
        capped (``strategy.max_client_weight``) after them.
        """
        losses = clip_losses([r.loss for r in replies], self.bounds.loss_clip)
        weights = np.asarray(self.client_weights(losses, [r.num_examples for r in replies]), dtype=np.float64)
        return weights if self.bounds.max_client_weight is None else cap_weights(weights, self.bounds.max_client_weight)

    def combine(self, replies: list[Reply], weights: np.ndarray) -> dict[str, np.ndarray]:
        """The round's aggregate of the replies' models before the server step: sum_k w_k theta_k.

        In bfloat16 transfer the replies are updates (records.reply_record): sum_k w_k (G + u_k)
        is (sum_k w_k) G + sum_k w_k u_k, one addition of G instead of one per client.
        """
        states = [r.state for r in replies]
        if self.transfer_dtype != BF16:
            return weighted_average(states, weights)
        mean, total = weighted_average(states, weights), float(weights.sum())
        return {k: (self._previous[k] * np.float32(total) + v if v.dtype == np.float32 else v) for k, v in mean.items()}

    def history_entry(
        self,
        server_round: int,
        replies: list[Reply],
        weights: np.ndarray,
        failures: list[dict],
        aggregate: Mapping[str, np.ndarray],
    ) -> dict:
        """The round's history entry: per client lists in partition-id order, round totals, failures."""
        sizes = [r.arrays.count_bytes() for r in replies]
        entry = {
            "round": server_round,
            "partition_ids": [r.partition_id for r in replies],
            "node_ids": [r.node_id for r in replies],
            "num_examples": [r.num_examples for r in replies],
            "train_loss": [r.loss for r in replies],
            "weights": weights.tolist(),
            "failures": failures,
            "bytes_sent": self._round.get("bytes_sent", 0),
            "bytes_received": sum(sizes),
            "update_norm": update_norm(aggregate, self._previous),
            # Per client: what it sent back, and how far its model moved from the global one it started from.
            "client_bytes_received": sizes,
            "client_update_norm": [r.norm for r in replies],
            "time_s": time.perf_counter() - self._round.get("start", time.perf_counter()),
            # Wall clock at the round's start: the gaps between rounds (checkpoint, history,
            # monitor, Flower's loop) show as the difference of consecutive starts less time_s.
            "started_at": self._round.get("started_at", time.time()),
            "server_rss_mb": rss_mb(),
            "server_shm_mb": object_store_mb(),
        }
        if self._round.get("norm_bound") is not None:
            entry["update_norm_bound"] = self._round["norm_bound"]
            entry["client_update_scale"] = [r.scale for r in replies]
        # The other metrics every reply holds (a finite number each), in the first reply's order.
        entry.update(
            {
                k: [r.extra[k] for r in replies]
                for k in (replies[0].extra if replies else {})
                if all(k in r.extra for r in replies)
            }
        )
        return entry

    def finish_round(self, entry: dict, replies: list[Message], aggregate: Mapping[str, np.ndarray]) -> None:
        """History, files (in the background), logger, console and progress bar; then free the replies' memory."""
        self.history.append(entry)
        # Flower's loop holds this round's replies until the next round's have come back: let
        # go of their tensors now, so that neither the heap nor (in the simulation) Ray's object
        # store keeps two rounds of replies.
        for m in replies:
            if not m.has_error():
                for arrays in m.content.array_records.values():
                    arrays.clear()
        if self.run is not None:
            self.save_round(entry["round"], aggregate)
        if self.logger is not None:
            self.logger.log_round(entry)
        weights, losses = entry["weights"], entry["train_loss"]
        mean_loss = float(np.dot(weights, losses))
        log.info(
            "round %d: loss %.4f (weighted) over %d clients, %d failed; weights %s, losses %s",
            entry["round"],
            mean_loss,
            len(losses),
            len(entry["failures"]),
            np.round(weights, 4).tolist(),
            np.round(losses, 4).tolist(),
        )
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{mean_loss:.3f}")
            self._bar.update(1)
        # What was freed since the last round (the previous round's replies and messages,
        # this round's temporaries) goes back to the OS once it passes a bound; see release_heap.
        release_heap()

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
        return MetricRecord(dict(leaves(results)))
