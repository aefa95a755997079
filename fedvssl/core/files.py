"""Atomic, pickle-free storage of named tensors.

Global models are ``.npz`` files of named arrays that load with
``allow_pickle=False``; client-local state is a ``torch.save`` of a flat dict of
tensors, read back with ``weights_only=True``. Every write goes to a temporary file
in the same folder and is renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; the run's files should be as readable as the umask allows.
_FILE_MODE = 0o666 & ~_umask()


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz(path: str | Path, state: Mapping[str, np.ndarray]) -> None:
    _atomic(Path(path), lambda f: np.savez(f, **{k: np.asarray(v) for k, v in state.items()}))


def npy_header(data: bytes | np.ndarray) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of the ``.npy`` bytes ``data`` (format 1.0 or 2.0)."""
    view = memoryview(data).cast("B")
    # Only the header is parsed: a BytesIO over a whole array-backed buffer would copy it.
    # Magic (6 bytes), version (2), then the header length in 2 (1.0) or 4 bytes (2.0+).
    size = 10 + int.from_bytes(view[8:10], "little") if view[6] == 1 else 12 + int.from_bytes(view[8:12], "little")
    f = io.BytesIO(bytes(view[:size]))
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    return shape, fortran, dtype, f.tell()


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Named arrays in file order; object (pickled) members are refused."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_tensors(path: str | Path, state: Mapping[str, torch.Tensor]) -> None:
    _atomic(Path(path), lambda f: torch.save({k: v.detach().cpu() for k, v in state.items()}, f))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path: str | Path, obj: Any) -> None:
    _atomic(Path(path), lambda f: f.write(json.dumps(obj, indent=2).encode()))


def write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))
