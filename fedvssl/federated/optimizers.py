"""Flower's server optimisers and central differential privacy inside FedVSSL's round, resumable.

:class:`ServerOptimizer` is :class:`~fedvssl.federated.robust.FlowerRule` admitting the Flower
rules that keep state between rounds: ``FedAvgM`` (its momentum), ``FedAdam``, ``FedYogi`` and
``FedAdagrad`` (their moments ``m_t`` and ``v_t``), and ``FedProx`` (stateless on the server;
its ``proximal_mu`` goes to the clients with every round). Optionally one of Flower's central
DP wrappers (``dp``) clips and noises the replies first. Everything else is FedVSSL's:
backbone-only exchange, seeded sampling, reply checks, history, checkpoints, resume, the
logger and the monitor. The arithmetic is Flower's; none is copied here.

A round, in order:

1. The replies' floating-point tensors go to Flower as messages. Integer tensors (BatchNorm's
   ``num_batches_tracked``) are no model weights: no optimiser or noise applies to them.
   Without DP they are averaged with the FedVSSL weights; with DP they keep the global
   model's values, so that nothing a client sends reaches the global model un-noised.
2. With ``dp``: the wrapper (around Flower's ``FedAvg``, equal weights) clips each update
   to ``clipping_norm`` and adds Gaussian noise of std ``noise_multiplier * C / m`` to their
   mean; its noise is drawn from NumPy's global generator, seeded here per (seed, round), so
   that runs repeat and resume exactly.
3. The rule (``rule``) takes the (noised) average, or the replies themselves without DP, and
   takes its step from the global model of the round (its ``current_arrays``, set here
   before every round as its ``configure_train`` would). The server optimiser thus steps on
   the noised mean: its state never holds an un-noised update, and the whole step is
   post-processing of the DP release.
4. The rule's state after the round is written to ``server-state/round-<r>.npz`` in the run
   folder, with the round's checkpoint and before the history entry that makes the round
   count, and read back when a run resumes: a resumed run continues bit for bit.

With ``dp`` the history records, per round, the noise multiplier the round had, the clipping
norm, and the (epsilon, delta) spent so far (:mod:`fedvssl.federated.privacy`); the console
gets one line per round.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedProx, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from fedvssl.core.files import load_npz, save_npz
from fedvssl.federated import privacy
from fedvssl.federated.aggregation import cast_like, clamp_variances, weighted_average
from fedvssl.federated.client_dp import KEY_CLIPPING, KEY_CLIPPING_NORM, KEY_NORM_BIT
from fedvssl.federated.records import numpy_to_record, record_to_numpy
from fedvssl.federated.replies import Reply
from fedvssl.federated.robust import STATELESS, FlowerRule
from fedvssl.federated.strategy import FedVSSL
from fedvssl.federated.training import seed_of

log = logging.getLogger(__name__)

# Flower 1.42 rules admitted here besides the stateless ones; their state is saved each round.
STATEFUL = ("FedAvgM", "FedAdam", "FedYogi", "FedAdagrad")
RULES = (*STATELESS, "FedProx", *STATEFUL)
# Flower's central DP wrappers (flwr.serverapp.strategy), built around FedAvg.
DP_WRAPPERS = (
    "DifferentialPrivacyServerSideFixedClipping",
    "DifferentialPrivacyClientSideFixedClipping",
    "DifferentialPrivacyServerSideAdaptiveClipping",
    "DifferentialPrivacyClientSideAdaptiveClipping",
)
# The keys of a dp config that are the accountant's, not the wrapper's.
ACCOUNTANT_KEYS = ("delta", "accounting")
STATE_DIR = "server-state"
_SEP = "::"  # between a state's name and the tensor's key in the .npz


def state_path(root, server_round: int):
    """Where the server state after ``server_round`` is kept in the run folder ``root``."""
    from pathlib import Path

    return Path(root) / STATE_DIR / f"round-{server_round}.npz"


def rule_state(rule: Strategy, dp: Strategy | None) -> dict[str, np.ndarray]:
    """What a rule (and a DP wrapper) carries from round to round, as named arrays."""
    state: dict[str, np.ndarray] = {}
    if isinstance(rule, FedOpt):
        for name in ("m_t", "v_t"):
            state.update({f"{name}{_SEP}{k}": v for k, v in (getattr(rule, name) or {}).items()})
    if isinstance(rule, FedAvgM) and rule.momentum_vector is not None:
        keys = list(rule.current_arrays.keys())
        state.update({f"momentum_vector{_SEP}{k}": v for k, v in zip(keys, rule.momentum_vector, strict=True)})
    if dp is not None and "Adaptive" in type(dp).__name__:
        state[f"dp{_SEP}clipping_norm"] = np.array(dp.clipping_norm, dtype=np.float64)
    return state


def load_rule_state(rule: Strategy, dp: Strategy | None, state: Mapping[str, np.ndarray]) -> None:
    """Put the arrays of :func:`rule_state` back into the rule (and the wrapper)."""
    parts: dict[str, dict[str, np.ndarray]] = {}
    for name, value in state.items():
        part, _, key = name.partition(_SEP)
        parts.setdefault(part, {})[key] = value
    if isinstance(rule, FedOpt):
        rule.m_t, rule.v_t = parts.get("m_t") or None, parts.get("v_t") or None
    if isinstance(rule, FedAvgM) and "momentum_vector" in parts:
        rule.momentum_vector = list(parts["momentum_vector"].values())
    if dp is not None and "dp" in parts:
        dp.clipping_norm = float(parts["dp"]["clipping_norm"])


@contextmanager
def numpy_seeded(seed: int):
    """NumPy's global generator seeded for the block, and as it was afterwards (Flower's DP noise draws from it)."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def build_flower(config: Mapping | Strategy, key: str, allowed: tuple[str, ...], **kwargs: object) -> Strategy:
    """The Flower strategy (or DP wrapper) a config names, built; ``key`` names it in errors."""
    if isinstance(config, Strategy):
        built = config
    else:
        target = str(config.get("_target_", "")) if isinstance(config, Mapping) else repr(config)
        if not target.startswith("flwr.") or target.rpartition(".")[2] not in allowed:
            raise ValueError(f"{key}: _target_={target} must be one of Flower's {', '.join(allowed)}")
        from hydra.utils import instantiate

        try:
            built = instantiate(dict(config), **kwargs, _convert_="all")
        except Exception as e:  # Hydra wraps the class's own error (a bad argument)
            while e.__cause__ is not None:
                e = e.__cause__
            raise ValueError(f"{key}: {str(e).splitlines()[0]}") from None
    if type(built).__name__ not in allowed or not type(built).__module__.startswith("flwr."):
        raise ValueError(f"{key}={type(built).__name__} must be one of Flower's {', '.join(allowed)}")
    return built


def build_dp(dp: Mapping | None, clients_per_round: object) -> tuple[Strategy | None, dict]:
    """The DP wrapper a config names, around Flower's FedAvg, and the accountant's settings (delta, accounting)."""
    if not dp:
        return None, {}
    dp = dict(dp)
    accountant = {k: dp.pop(k) for k in ACCOUNTANT_KEYS if k in dp}
    accountant.setdefault("delta", 1e-5)
    accountant.setdefault("accounting", privacy.WITHOUT_REPLACEMENT)
    target = str(dp.get("_target_", ""))
    if not target.startswith("flwr.") or target.rpartition(".")[2] not in DP_WRAPPERS:
        raise ValueError(f"strategy.dp: _target_={target} must be one of Flower's {', '.join(DP_WRAPPERS)}")
    sampled = dp.get("num_sampled_clients")
    if sampled != clients_per_round:
        raise ValueError(
            f"strategy.dp.num_sampled_clients={sampled} must equal strategy.clients_per_round={clients_per_round}: "
            "the noise is calibrated for that many clipped updates"
        )
    z = dp.get("noise_multiplier")
    if not isinstance(z, int | float) or isinstance(z, bool) or z <= 0:
        raise ValueError(f"strategy.dp.noise_multiplier={z} must be a number > 0")
    delta, accounting = accountant["delta"], accountant["accounting"]
    try:
        privacy.check_privacy(float(z), int(sampled), int(sampled), delta, accounting)
    except ValueError as e:
        raise ValueError(f"strategy.dp.{e}") from None
    return build_flower(dp, "strategy.dp", DP_WRAPPERS, strategy=FedAvg()), accountant


class ServerOptimizer(FlowerRule):
    """FedVSSL with a Flower rule that may keep state (server optimisers, FedProx), optionally behind central DP."""

    @staticmethod
    def check_settings(*args: object, rule: object = None, dp: Mapping | None = None, **settings: object) -> None:
        """FedVSSL's settings, the rule, and the DP wrapper with what DP needs: alpha 0 (equal weights)."""
        FedVSSL.check_settings(*args, **settings)
        if rule is not None:
            build_flower(rule, "strategy.rule", RULES)
        if dp:
            alpha = settings.get("alpha", args[0] if args else 0)
            if alpha != 0:
                raise ValueError(
                    f"strategy.alpha={alpha} must be 0 with strategy.dp: loss-based weights depend on what the "
                    "clients report, and the noise is calibrated for equal weights"
                )
            build_dp(dp, settings.get("clients_per_round", args[3] if len(args) > 3 else None))
            transfer = settings.get("transfer_dtype", "float32")
            if "ClientSide" in str(dp.get("_target_")) and transfer != "float32":
                raise ValueError(
                    f"strategy.transfer_dtype={transfer} must be float32 with client-side clipping: "
                    "Flower's clipping mods take the reply for the model, not its update"
                )

    def __init__(self, rule: object, dp: Mapping | None = None, **settings: object) -> None:
        # FedVSSL's own setup; the rule is built here, as FlowerRule admits stateless rules only.
        FedVSSL.__init__(self, **settings)
        self.check_settings(rule=rule, dp=dp, **settings)
        self.rule = build_flower(rule, "strategy.rule", RULES)
        self.dp, self.accountant = build_dp(dp, self.clients_per_round)
        if self.run is not None and self.start_round:
            self.restore_state(self.start_round)

    # -- the round -------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid):
        """FedVSSL's, with what Flower's ``configure_train`` of the rule and the wrapper would add to the config."""
        if isinstance(self.rule, FedProx):
            config["proximal-mu"] = float(self.rule.proximal_mu)
        if self.dp is not None and "ClientSide" in type(self.dp).__name__:
            # What the wrapper's configure_train would send; the ClientApp's clipping_mod picks
            # Flower's fixed or adaptive clipping mod by the second key.
            config[KEY_CLIPPING_NORM] = float(self.dp.clipping_norm)
            config[KEY_CLIPPING] = "adaptive" if "Adaptive" in type(self.dp).__name__ else "fixed"
        return super().configure_train(server_round, arrays, config, grid)

    def weigh(self, replies: list[Reply]) -> np.ndarray:
        """FedVSSL's weights; with DP, equal weights (the noise is calibrated for the plain mean)."""
        if self.dp is None:
            return super().weigh(replies)
        return np.full(len(replies), 1.0 / len(replies)) if replies else np.zeros(0)

    def combine(self, replies: list[Reply], weights: np.ndarray) -> dict[str, np.ndarray]:
        """The float tensors through the DP wrapper (if any) and the rule; integer tensors apart (see the module)."""
        server_round = int(self._round.get("round", 0))
        floats = [k for k in self._previous if np.issubdtype(np.asarray(self._previous[k]).dtype, np.floating)]
        current = {k: np.asarray(self._previous[k]) for k in floats}
        models = [self.model_of(r) for r in replies]
        messages = [
            self._message({k: m[k] for k in floats}, w, r) for m, w, r in zip(models, weights, replies, strict=True)
        ]
        if self.dp is not None:
            self._round["clipping_norm"] = float(self.dp.clipping_norm)
            if hasattr(self.dp, "current_arrays"):
                self.dp.current_arrays = numpy_to_record(current)
            with numpy_seeded(seed_of(self.seed, server_round, 0xD1FF)):
                noised, _ = self.dp.aggregate_train(server_round, messages)
            if noised is None:
                raise RuntimeError(f"{type(self.dp).__name__} released nothing from {len(replies)} replies")
            messages = [Message(RecordDict({"arrays": noised, "metrics": MetricRecord({self._key(): 1.0})}),
                                dst_node_id=0, message_type="train")]  # fmt: skip
        self._set_current(current)
        arrays, _ = self.rule.aggregate_train(server_round, messages)
        if arrays is None:
            raise RuntimeError(f"{type(self.rule).__name__} aggregated nothing from {len(replies)} replies")
        out = record_to_numpy(arrays)
        self._round["negative_variances"] = clamp_variances(out)
        ints = [k for k in self._previous if k not in current]
        if self.dp is None and ints:
            out.update(weighted_average([{k: m[k] for k in ints} for m in models], weights))
        return {k: cast_like(out[k], self._previous[k]) if k in out else np.asarray(self._previous[k])
                for k in self._previous}  # fmt: skip

    def _key(self) -> str:
        return getattr(self.rule, "weighted_by_key", "num-examples")

    def _message(self, state: Mapping[str, np.ndarray], weight: float, reply: Reply) -> Message:
        """A reply's float tensors as Flower's rules read them, its weight under the rule's key."""
        metrics = {self._key(): float(weight)}
        if KEY_NORM_BIT in reply.extra:  # client-side adaptive clipping: whether the client clipped (0 or 1)
            metrics[KEY_NORM_BIT] = int(reply.extra[KEY_NORM_BIT])
        content = RecordDict({"arrays": numpy_to_record(state), "metrics": MetricRecord(metrics)})
        return Message(content=content, metadata=copy.copy(reply.message.metadata))

    def _set_current(self, current: Mapping[str, np.ndarray]) -> None:
        """The rule steps from this round's global model (what its ``configure_train`` would keep)."""
        if isinstance(self.rule, FedOpt):
            self.rule.current_arrays = dict(current)
        elif isinstance(self.rule, FedAvgM):
            self.rule.current_arrays = ArrayRecord({k: Array(np.asarray(v)) for k, v in current.items()})

    # -- the history: the privacy spent ----------------------------------------------------
    def history_entry(self, server_round: int, replies: list[Reply], weights: np.ndarray, failures, aggregate):
        entry = super().history_entry(server_round, replies, weights, failures, aggregate)
        if below := self._round.get("negative_variances"):
            entry["negative_variances"] = below
            if not any("negative_variances" in e for e in self.history):
                log.warning(
                    "round %d: %d BatchNorm running variances fell below 0 in the %s step and were set to 0 "
                    "(counted per round in history.json as negative_variances)",
                    server_round, below, "DP noise" if self.dp is not None else "server optimiser's",
                )  # fmt: skip
        if self.dp is not None and replies:
            entry.update(self.privacy_entry(len(replies)))
            log.info(
                "round %d: privacy spent epsilon %.4g at delta %g (%s sampling of %d of %d clients, noise %.4g)",
                server_round, entry["epsilon"], entry["delta"], entry["accounting"], self.clients_per_round,
                self.num_clients, entry["noise_multiplier"],
            )  # fmt: skip
        return entry

    def privacy_entry(self, replies: int) -> dict:
        """This round's noise multiplier and clipping norm, and the (epsilon, delta) of all rounds so far."""
        dp, m = self.dp, self.clients_per_round
        if "Adaptive" in type(dp).__name__:
            # Flower draws the update noise at the clipping norm it has just updated, and the
            # clipped-count query is noised too (Andrew et al., NeurIPS 2021, Theorem 1: the pair
            # is one Gaussian mechanism of multiplier (z_u^-2 + (2 sigma_b)^-2)^-1/2).
            z_u = dp.noise_multiplier * dp.clipping_norm / self._round["clipping_norm"] * replies / m
            z = (z_u**-2 + (2 * dp.clipped_count_stddev) ** -2) ** -0.5
        else:
            z = privacy.round_multiplier(dp.noise_multiplier, replies, m)
        past = [e["noise_multiplier"] for e in self.history if "noise_multiplier" in e]
        delta, accounting = self.accountant["delta"], self.accountant["accounting"]
        eps = privacy.spent([*past, z], m, self.num_clients, delta, accounting)
        return {
            "noise_multiplier": float(z),
            "clipping_norm": self._round["clipping_norm"],
            "epsilon": eps,
            "delta": delta,
            "accounting": accounting,
            "sampling_rate": m / self.num_clients,
        }

    # -- the rule's state in the run folder ------------------------------------------------
    def save_state(self, server_round: int):
        """The writer of the rule's state after ``server_round`` (run in the background before the history)."""
        state = rule_state(self.rule, self.dp)
        if not state:
            return None
        root = self.run.root

        def write() -> None:
            save_npz(state_path(root, server_round), state)
            # The state a resume may still need: this round's, and the one before (its
            # history entry may not be on disk yet when this write ends).
            for old in state_path(root, 0).parent.glob("round-*.npz"):
                if int(old.stem.split("-")[1]) < server_round - 1:
                    old.unlink(missing_ok=True)

        return write

    def save_round(self, server_round: int, aggregate: Mapping[str, np.ndarray]) -> None:
        """FedVSSL's files of the round, after the rule's state: the one writer thread runs them in order.

        A round counts once its history entry is on disk, and that is written after the state.
        """
        writer = self.save_state(server_round)
        if writer is not None:
            self.wait_saved()
            self._state_saving = self._writer.submit(writer)
        super().save_round(server_round, aggregate)

    def wait_saved(self) -> None:
        saving, self._state_saving = getattr(self, "_state_saving", None), None
        try:
            if saving is not None:
                saving.result()
        finally:
            super().wait_saved()

    def restore_state(self, server_round: int) -> None:
        """The rule's state after ``server_round``, as the run that stopped there saved it."""
        if not rule_state_expected(self.rule, self.dp, server_round):
            return
        path = state_path(self.run.root, server_round)
        if not path.is_file():
            raise ValueError(
                f"{path} is missing: resuming {type(self.rule).__name__} needs its state after round {server_round}"
            )
        load_rule_state(self.rule, self.dp, load_npz(path))
        log.info("resuming %s with its state after round %d", type(self.rule).__name__, server_round)


def rule_state_expected(rule: Strategy, dp: Strategy | None, server_round: int) -> bool:
    """Whether a run of this rule that completed ``server_round`` rounds saved a state."""
    if server_round < 1:
        return False
    momentum = isinstance(rule, FedAvgM) and rule.server_momentum > 0
    return isinstance(rule, FedOpt) or momentum or (dp is not None and "Adaptive" in type(dp).__name__)
