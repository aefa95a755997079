"""Model tensors in Flower's records and back, shared by the server and the clients."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


class LazyArrays(Mapping):
    """Read-only view of an ArrayRecord that decodes a tensor only when it is read."""

    def __init__(self, record: ArrayRecord) -> None:
        self.record = record

    def __getitem__(self, key: str) -> np.ndarray:
        # A read-only view on the message bytes: no copy (Array.numpy() would make one).
        data = self.record[key].data
        f = io.BytesIO(data)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            raise ValueError(f"tensor {key} holds Python objects")
        arr = np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=f.tell())
        return arr.reshape(shape, order="F" if fortran else "C")

    def __iter__(self):
        return iter(self.record.keys())

    def __len__(self) -> int:
        return len(self.record)


def numpy_to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in state.items()})
