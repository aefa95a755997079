"""Model tensors in Flower's records and back, shared by the server and the clients.

``strategy.transfer_dtype=bfloat16`` sends the float32 tensors as bfloat16, half the
bytes. NumPy has no bfloat16, so such a tensor travels as the uint16 bit patterns of
its bfloat16 values (rounded to nearest even), in an Array whose ``dtype`` says
``bfloat16``; every reader here expands it back to float32 exactly. Other tensors
(the int64 BatchNorm counters) travel unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedvssl.files import npy_header

TRANSFER_DTYPES = ("float32", "bfloat16")
BF16 = "bfloat16"


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the uint16 bit patterns of its bfloat16 rounding (torch's: nearest even, NaN kept)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(torch.bfloat16)
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

    def __getitem__(self, key: str) -> np.ndarray:
        # A read-only view on the message bytes: no copy (Array.numpy() would make one).
        data = self.record[key].data
        shape, fortran, dtype, offset = npy_header(data)
        if dtype.hasobject:
            raise ValueError(f"tensor {key} holds Python objects")
        arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset)
        return _decode(self.record[key], arr.reshape(shape, order="F" if fortran else "C"))

    def __iter__(self):
        return iter(self.record.keys())

    def __len__(self) -> int:
        return len(self.record)


def _array(v: np.ndarray, transfer_dtype: str) -> Array:
    v = np.require(v, requirements="C")
    if transfer_dtype == BF16 and v.dtype == np.float32:
        buf = io.BytesIO()
        np.save(buf, to_bf16_bits(v), allow_pickle=False)
        return Array(dtype=BF16, shape=tuple(v.shape), stype="numpy.ndarray", data=buf.getvalue())
    return Array(v)


def numpy_to_record(state: Mapping[str, np.ndarray], transfer_dtype: str = "float32") -> ArrayRecord:
    """The tensors as an ArrayRecord; float32 ones in bfloat16 if ``transfer_dtype`` says so."""
    if transfer_dtype not in TRANSFER_DTYPES:
        raise ValueError(f"strategy.transfer_dtype={transfer_dtype!r} must be one of {', '.join(TRANSFER_DTYPES)}")
    return ArrayRecord({k: _array(v, transfer_dtype) for k, v in state.items()})
