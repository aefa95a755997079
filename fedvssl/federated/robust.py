"""Flower's aggregation rules inside FedVSSL's round: robust aggregation by composition.

:class:`FlowerRule` is FedVSSL with its ``combine`` hook handed to a Flower strategy
(``strategy=fedmedian``, ``fedtrimmedavg``, ``krum``, ``multikrum``, ``bulyan``): the replies
that passed the checks and the bounds go to the rule's own ``aggregate_train`` as Flower
messages, and its ArrayRecord comes back as the round's aggregate. Everything else is
FedVSSL's: the backbone-only exchange, seeded sampling, reply checks, the history,
checkpoints and retention, resume, the logger and the monitor, and the beta step after
the rule (``beta: 0`` in these configs). The arithmetic is Flower's; none is copied here.

Each reply's message carries its FedVSSL weight (alpha, capped by the bounds) under the
rule's ``weighted_by_key``, so rules that weigh (FedAvg; Krum and MultiKrum average the
replies they select) use FedVSSL's weights; the median, trimmed mean and Bulyan ignore
weights. The configs set ``alpha: 0``: weights by sample counts.

Replies in bfloat16 transfer are updates; the rule gets the clients' models ``G + u_k``.

Rules that keep server state between rounds (FedAvgM's momentum, FedAdam, FedYogi and
FedAdagrad's moments) and Flower's central DP wrappers are refused here: they run in
:class:`fedvssl.federated.optimizers.ServerOptimizer`, which saves their state with each
round's checkpoint and restores it when a run resumes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy

from fedvssl.federated.aggregation import cast_like
from fedvssl.federated.records import BF16, numpy_to_record, record_to_numpy
from fedvssl.federated.replies import Reply
from fedvssl.federated.strategy import FedVSSL

# Flower 1.42 rules (flwr.serverapp.strategy) whose aggregation is a function of the round's replies alone.
STATELESS = ("FedAvg", "FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan")


def build_rule(rule: object) -> Strategy:
    """The Flower strategy a config names (``{_target_: flwr.serverapp.strategy.FedMedian, ...}``), or the one given."""
    if isinstance(rule, Mapping):
        from hydra.utils import instantiate

        try:
            rule = instantiate(dict(rule), _convert_="all")
        except Exception as e:  # Hydra wraps the class's own error (a bad argument, an unknown name)
            while e.__cause__ is not None:
                e = e.__cause__
            raise ValueError(f"strategy.rule: {str(e).splitlines()[0]}") from None
    name = type(rule).__name__
    if not isinstance(rule, Strategy) or name not in STATELESS or not type(rule).__module__.startswith("flwr."):
        raise ValueError(f"strategy.rule={name} must be one of Flower's {', '.join(STATELESS)}")
    return rule


def checked_rule(rule: object, min_replies: object) -> Strategy:
    """The rule, built; ``strategy.min_replies`` must be what it needs (Bulyan: 4 f + 3, f = num_malicious_nodes)."""
    built = build_rule(rule)
    needed = 4 * built.num_malicious_nodes + 3 if type(built).__name__ == "Bulyan" else 1
    if isinstance(min_replies, int) and min_replies < needed:
        raise ValueError(
            f"strategy.min_replies={min_replies} must be at least {needed} for {type(built).__name__} "
            "(4 * num_malicious_nodes + 3)"
        )
    return built


class FlowerRule(FedVSSL):
    """FedVSSL whose replies are combined by a Flower strategy's ``aggregate_train`` (``rule``)."""

    @staticmethod
    def check_settings(*args: object, rule: object = None, **settings: object) -> None:
        """FedVSSL's settings, and the rule: a stateless Flower rule, with ``min_replies`` enough for it."""
        FedVSSL.check_settings(*args, **settings)
        if rule is not None:
            checked_rule(rule, settings.get("min_replies", 1))

    def __init__(self, rule: object, **settings: object) -> None:
        super().__init__(**settings)
        self.rule = checked_rule(rule, self.min_replies)

    def combine(self, replies: list[Reply], weights: np.ndarray) -> dict[str, np.ndarray]:
        """The rule's aggregate of the replies' models, in the global model's dtypes."""
        key = self.rule.weighted_by_key
        messages = [
            Message(
                content=RecordDict({"arrays": numpy_to_record(self.model_of(r)), "metrics": MetricRecord({key: w})}),
                metadata=copy.copy(r.message.metadata),
            )
            for r, w in zip(replies, weights.tolist(), strict=True)
        ]
        arrays, _ = self.rule.aggregate_train(self._round.get("round", 0), messages)
        if arrays is None:  # Bulyan with too few replies: min_replies is checked against it, so not expected
            raise RuntimeError(f"{type(self.rule).__name__} aggregated nothing from {len(replies)} replies")
        out = record_to_numpy(arrays)
        return {k: cast_like(out[k], self._previous[k]) for k in self._previous}

    def model_of(self, reply: Reply) -> Mapping[str, np.ndarray]:
        """A reply's model: its tensors, or in bfloat16 transfer the global model plus its update."""
        if self.transfer_dtype != BF16:
            return reply.state
        return {
            k: (self._previous[k] + v if v.dtype == np.float32 else v)
            for k, v in ((k, reply.state[k]) for k in reply.state)
        }
