"""Model tensors in Flower's records and back, shared by the server and the clients."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fedvssl.files import npy_header


def record_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


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
        return arr.reshape(shape, order="F" if fortran else "C")

    def __iter__(self):
        return iter(self.record.keys())

    def __len__(self) -> int:
        return len(self.record)


def numpy_to_record(state: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in state.items()})
