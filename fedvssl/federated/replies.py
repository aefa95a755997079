"""The clients' replies to a round, as the server takes them: checked replies and failures.

A round's messages come back as replies with content, error replies (a crashed
ClientApp, a node the SuperLink gave up on) or not at all (``runtime.round_timeout_s``).
Every client that does not count in the round is a *failure*: a dict with its node id,
partition id and a one-line reason, listed in the round's history entry.

The server trusts no reply: :func:`check` reads one against the round's global model
and either returns it as a :class:`Reply` or raises :class:`Rejected` with the reason.
A reply counts only if it holds one MetricRecord and one ArrayRecord; its tensors have
the global model's keys and shapes, their dtype family (floating or integer; a float64
copy of float32 values is cast) and finite values; its metrics hold a finite, non-negative
``train-loss``, an integer ``num-examples`` from 1 to the client's partition size or
``strategy.max_num_examples``, and an integer ``partition-id`` of this run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from fedvssl.core.files import npy_header
from fedvssl.federated.aggregation import update_norm
from fedvssl.federated.records import BF16, from_bf16_bits

# The metrics every reply carries; the others (times, memory, pretext accuracy) are recorded as they come.
REQUIRED_METRICS = ("train-loss", "num-examples", "partition-id")


@dataclass
class Reply:
    """A client's reply that counts in the round: what the aggregation and the history read."""

    node_id: int
    partition_id: int
    loss: float  # train-loss as reported
    num_examples: int
    arrays: ArrayRecord  # the reply's record (its bytes; cleared once the round is aggregated)
    state: Mapping[str, np.ndarray]  # its tensors: weights, or in bfloat16 transfer updates (records.py)
    norm: float = 0.0  # the L2 norm of its update (float tensors), as sent
    scale: float = 1.0  # the factor its update was scaled by (strategy.update_norm_action=clip)
    extra: dict[str, float] = field(default_factory=dict)  # the other metrics
    message: Message | None = None  # the reply itself (its metadata, for rules that take messages)


class Rejected(ValueError):
    """A reply that fails a check; the message is the reason, one line."""


@dataclass(frozen=True)
class Expected:
    """What a reply must match in a round."""

    shapes: Mapping[str, tuple[int, ...]]  # the global model's tensors, in its order
    dtypes: Mapping[str, np.dtype]
    num_clients: int  # partition ids are 0 .. num_clients - 1
    partition_sizes: Mapping[int, int] | None = None  # partition id -> videos listed, where the server knows them
    max_num_examples: int | None = None  # strategy.max_num_examples

    @classmethod
    def of(cls, model: Mapping[str, np.ndarray], num_clients: int, **bounds) -> Expected:
        """What replies must match when ``model`` is the round's global model."""
        shapes = {k: tuple(np.shape(v)) for k, v in model.items()}
        return cls(shapes, {k: np.asarray(model[k]).dtype for k in model}, num_clients, **bounds)


class Tensors(Mapping):
    """A reply's checked tensors in the global model's order: views on its bytes, bfloat16 expanded when read."""

    def __init__(self, arrays: dict[str, np.ndarray], bf16: set[str]) -> None:
        self.arrays, self.bf16 = arrays, bf16

    def __getitem__(self, key: str) -> np.ndarray:
        a = self.arrays[key]
        return from_bf16_bits(a) if key in self.bf16 else a

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


def short_reason(reason: str) -> str:
    """The innermost ``SomeError: message`` line of a (Ray-wrapped) client traceback."""
    lines = [line.strip(" '>") for line in reason.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): \S", line)]
    return (errors[-1] if errors else lines[0] if lines else "unknown error")[:500]


def single(records: dict, what: str, node: int):
    """The one record of a kind that a reply must hold."""
    if len(records) != 1:
        raise ValueError(f"node {node} replied with {len(records)} {what}s, expected one")
    return next(iter(records.values()))


def failure(node: int, partitions: Mapping[int, int], reason: str) -> dict:
    """A failed client, as the history lists it."""
    return {"node_id": int(node), "partition_id": partitions.get(node, -1), "reason": reason}


def sort_out(
    replies: list[Message], sent: Mapping[str, int], partitions: Mapping[int, int], timeout_reason: str
) -> tuple[list[tuple[int, Message]], list[dict], list[int]]:
    """The replies with content (with their nodes), a failure for each error reply and each node that never replied,
    and those nodes.

    ``sent`` maps each message of the round to the node it went to: an error the SuperLink
    writes (a node that stopped sending heartbeats) comes from the SuperLink itself, so
    the node is named by the message it answers; a reply with content by its sender.
    """
    node = {id(m): sent.get(m.metadata.reply_to_message_id, int(m.metadata.src_node_id)) for m in replies}
    valid = [(int(m.metadata.src_node_id), m) for m in replies if not m.has_error()]
    failures = [failure(node[id(m)], partitions, short_reason(m.error.reason)) for m in replies if m.has_error()]
    replied = {n for n, _ in valid} | {node[id(m)] for m in replies if m.has_error()}
    silent = [n for n in sent.values() if n not in replied]
    failures += [failure(n, partitions, timeout_reason) for n in silent]
    return valid, failures, silent


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise Rejected(f"metric {key}={value!r:.40} is not a number")
    try:
        x = float(value)
    except OverflowError:  # an int beyond float range
        x = math.inf
    if not math.isfinite(x):
        raise Rejected(f"metric {key}={value!r:.40} is not finite")
    return x


def _integer(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise Rejected(f"metric {key}={value!r:.40} is not an integer")
    return int(value)


def check_metrics(metrics: Mapping, node: int, expected: Expected, partitions: Mapping[int, int]) -> tuple:
    """Partition id, loss, sample count and the other metrics (finite numbers only) of a reply's MetricRecord."""
    for key in REQUIRED_METRICS:
        if key not in metrics:
            raise Rejected(f"no {key} metric")
    pid = _integer(metrics["partition-id"], "partition-id")
    if not 0 <= pid < expected.num_clients:
        raise Rejected(f"metric partition-id={pid} is not a partition of this run (0..{expected.num_clients - 1})")
    loss = _number(metrics["train-loss"], "train-loss")
    if loss < 0:
        raise Rejected(f"metric train-loss={loss:g} is negative, which no pretext loss can be")
    n = _integer(metrics["num-examples"], "num-examples")
    if n < 1:
        raise Rejected(f"metric num-examples={n} is not positive")
    # The partition the server knows for this node (from its query) bounds its count; else the one it names.
    known = expected.partition_sizes or {}
    held = partitions.get(node, pid)
    size = known.get(held)
    if size is not None and n > size:
        raise Rejected(f"metric num-examples={str(n)[:24]} exceeds the {size} videos of partition {held}")
    bound = expected.max_num_examples
    if bound is not None and n > bound:
        raise Rejected(f"metric num-examples={str(n)[:24]} exceeds strategy.max_num_examples={bound}")
    extra = {}
    for key, value in metrics.items():
        if key not in REQUIRED_METRICS and isinstance(key, str):
            try:
                extra[key] = _number(value, key)
            except Rejected:  # a metric nobody relies on: left out of the history, the reply still counts
                continue
    return pid, loss, n, extra


def read_tensor(array: Array, key: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """One tensor of a reply, checked against the global model's ``shape`` and ``dtype``, and whether it is bfloat16.

    A view on the reply's bytes when it has the global model's dtype; a copy cast to it
    when it is of the same family (float64 for float32, int32 for int64).
    """
    try:
        data = array.data
        file_shape, fortran, file_dtype, offset = npy_header(data)
    except Exception as e:
        raise Rejected(f"tensor {key} is not readable .npy data ({type(e).__name__})") from None
    if tuple(file_shape) != tuple(shape):
        raise Rejected(f"tensor {key} has shape {tuple(file_shape)} where the global model's is {tuple(shape)}")
    bf16 = array.dtype == BF16
    floating = np.issubdtype(dtype, np.floating)
    if bf16 and (file_dtype != np.uint16 or not floating):
        raise Rejected(f"tensor {key} says bfloat16 but holds {file_dtype} for a {dtype} tensor")
    same_family = np.issubdtype(file_dtype, np.floating) if floating else _is_int(file_dtype)
    if not bf16 and not same_family:
        raise Rejected(f"tensor {key} has dtype {file_dtype} where the global model's is {dtype}")
    size = int(np.prod(shape, dtype=np.int64))
    if len(memoryview(data).cast("B")) < offset + size * file_dtype.itemsize:
        raise Rejected(f"tensor {key} holds fewer bytes than its shape {tuple(shape)} needs")
    a = np.frombuffer(data, dtype=file_dtype, count=size, offset=offset).reshape(shape, order="F" if fortran else "C")
    if bf16 or file_dtype == dtype:
        return a, bf16
    if not floating:
        info = np.iinfo(dtype)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise Rejected(f"tensor {key} holds integers beyond {dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which the finiteness check names
        return a.astype(dtype), False


def _is_int(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) and dtype != np.bool_


def check_tensors(arrays: ArrayRecord, expected: Expected) -> Tensors:
    """A reply's tensors, checked against the global model's keys, shapes and dtypes (values: see :func:`check`)."""
    if set(arrays.keys()) != set(expected.shapes):
        missing = [k for k in expected.shapes if k not in arrays]
        extra = [k for k in arrays if k not in expected.shapes]
        raise Rejected(
            f"its tensors are not the global model's: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {[str(k)[:80] for k in extra[:3]]}{'...' if len(extra) > 3 else ''}"
        )
    read, bf16 = {}, set()
    for key, shape in expected.shapes.items():
        read[key], is_bf16 = read_tensor(arrays[key], key, shape, expected.dtypes[key])
        if is_bf16:
            bf16.add(key)
    return Tensors(read, bf16)


def first_non_finite(state: Mapping[str, np.ndarray]) -> str | None:
    """The first tensor of ``state`` holding NaN or Inf, if any."""
    for key in state:
        a = state[key]
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            return key
    return None


def check(
    message: Message,
    expected: Expected,
    partitions: Mapping[int, int],
    previous: Mapping[str, np.ndarray] | None,
) -> Reply:
    """A reply, checked (see the module's doc); :class:`Rejected` with the reason if it fails.

    ``previous`` is the round's global model, from which a reply of weights moved (float32
    transfer); None where replies are updates (bfloat16 transfer). The update norm is
    computed once here: finite only if every value is, it spares a second pass.
    """
    node = int(message.metadata.src_node_id)
    content = message.content
    for what, records in (("MetricRecord", content.metric_records), ("ArrayRecord", content.array_records)):
        if len(records) != 1:
            raise Rejected(f"the reply holds {len(records)} {what}s, expected one")
    pid, loss, n, extra = check_metrics(next(iter(content.metric_records.values())), node, expected, partitions)
    arrays = next(iter(content.array_records.values()))
    state = check_tensors(arrays, expected)
    norm = update_norm(state, previous)
    if not math.isfinite(norm):
        raise Rejected(f"tensor {first_non_finite(state)} holds non-finite values (NaN or Inf)")
    return Reply(node, pid, loss, n, arrays, state, norm, extra=extra, message=message)
