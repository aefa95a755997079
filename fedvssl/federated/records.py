"""Model tensors in Flower's records and back, shared by the server and the clients.

``strategy.transfer_dtype=bfloat16`` sends the float32 tensors as bfloat16, half the
bytes. NumPy has no bfloat16, so such a tensor travels as the uint16 bit patterns of
its bfloat16 values (rounded to nearest even), in an Array whose ``dtype`` says
``bfloat16``; every reader here expands it back to float32 exactly. Other tensors
(the int64 BatchNorm counters) travel unchanged.

In bfloat16 a client replies with its update (trained minus received weights), not its
weights (``reply_record``), and the strategy adds the weighted mean of the updates to its
own float32 global model. Rounding then costs 2^-9 of an update, not 2^-9 of each
weight, and the global model keeps float32 precision from round to round.

A tensor's ``.npy`` bytes are a ``bytes`` object, which every transport takes. In Flower's
in-process simulation, where messages reach the client actors through Ray, they can be a
uint8 NumPy array instead (``in_memory=True``): Ray passes NumPy buffers out of band, one
copy into its object store and none out of it, where it pickles ``bytes`` into the
message and copies them out again (133 MB each way, per client and round). A reader
here takes both.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedvssl.core.files import npy_header

TRANSFER_DTYPES = ("float32", "bfloat16")
BF16 = "bfloat16"


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the uint16 bit patterns of its bfloat16 rounding (torch's: nearest even, NaN kept)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not x.flags.writeable:  # a view on a message's bytes: torch wraps writable memory only
        x = x.copy()
    t = torch.from_numpy(x).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> float32, exactly (bfloat16 is float32's upper half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _decode(array: Array, values: np.ndarray) -> np.ndarray:
    return from_bf16_bits(values) if array.dtype == BF16 else values


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: _decode(v, v.numpy()) for k, v in record.items()}


class LazyArrays(Mapping):
    """Read-only view of an ArrayRecord that decodes a tensor only when it is read."""

    def __init__(self, record: ArrayRecord) -> None:
        self.record = record
        # Each tensor's view, made on first read: a round reads the previous global model's
        # tensors several times (update norms, the beta step), and parsing a .npy header
        # costs 50 us, 0.1 s a round over 120 tensors and seven reads.
        self._views: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if (arr := self._views.get(key)) is None:
            # A read-only view on the message bytes: no copy (Array.numpy() would make one).
            data = self.record[key].data
            shape, fortran, dtype, offset = npy_header(data)
            if dtype.hasobject:
                raise ValueError(f"tensor {key} holds Python objects")
            arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset)
            arr = self._views[key] = arr.reshape(shape, order="F" if fortran else "C")
        return _decode(self.record[key], arr)

    def __iter__(self):
        return iter(self.record.keys())

    def __len__(self) -> int:
        return len(self.record)


def npy_bytes(v: np.ndarray, in_memory: bool = False) -> bytes | np.ndarray:
    """``np.save``'s bytes of a C-contiguous array, copied once (``np.save`` into a BytesIO copies twice).

    Every round turns six backbones (133 MB each) into records: the clients' replies and the
    new global model. ``in_memory``: the same bytes in a uint8 array (see the module's doc).
    """
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(v))
    head, body = head.getvalue(), v.reshape(-1).view(np.uint8)
    if not in_memory:
        return b"".join((head, body.data))
    out = np.empty(len(head) + body.size, np.uint8)
    out[: len(head)] = np.frombuffer(head, np.uint8)
    out[len(head) :] = body
    return out


def _array(v: np.ndarray, transfer_dtype: str, in_memory: bool) -> Array:
    v = np.require(v, requirements="C")
    dtype = str(v.dtype)
    if transfer_dtype == BF16 and v.dtype == np.float32:
        v, dtype = to_bf16_bits(v), BF16
    elif v.dtype.hasobject:
        raise ValueError("a tensor of Python objects cannot travel")
    data = npy_bytes(v, in_memory)
    if not in_memory:
        return Array(dtype=dtype, shape=tuple(v.shape), stype="numpy.ndarray", data=data)
    # Array's constructor takes bytes only; the field itself is read as a buffer everywhere.
    array = Array(dtype=dtype, shape=tuple(v.shape), stype="numpy.ndarray", data=b"")
    array.data = data
    return array


def numpy_to_record(
    state: Mapping[str, np.ndarray], transfer_dtype: str = "float32", in_memory: bool = False
) -> ArrayRecord:
    """The tensors as an ArrayRecord; float32 ones in bfloat16 if ``transfer_dtype`` says so.

    ``in_memory=True`` only where the record never leaves Flower's in-process simulation:
    a gRPC transport takes ``bytes`` only.
    """
    if transfer_dtype not in TRANSFER_DTYPES:
        raise ValueError(f"strategy.transfer_dtype={transfer_dtype!r} must be one of {', '.join(TRANSFER_DTYPES)}")
    record = ArrayRecord()
    for k, v in state.items():  # set one by one: ArrayRecord(dict) rebuilds each Array, from bytes only
        record[k] = _array(v, transfer_dtype, in_memory)
    return record


def is_in_memory(record: ArrayRecord) -> bool:
    """Whether the record's tensors are NumPy-backed (built with ``in_memory=True``)."""
    return any(isinstance(v.data, np.ndarray) for v in record.values())


def reply_record(
    trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray], transfer_dtype: str, in_memory: bool
) -> ArrayRecord:
    """A client's reply: its tensors in float32, or in bfloat16 the float32 ones as updates (trained - received)."""
    if transfer_dtype == BF16:
        trained = {k: (v - received[k] if v.dtype == np.float32 else v) for k, v in trained.items()}
    return numpy_to_record(trained, transfer_dtype, in_memory)
