"""Reading any backbone checkpoint: ours, the published FedVSSL ``round-540.npz`` files
(three pickled layouts), and torchvision ``r3d_18`` state_dicts; writing either format.

The published files hold a pickled Flower ``Parameters`` object (or an object array
of arrays). They are read with a restricted unpickler that resolves only that class
(to a local stand-in, so flwr 0.18 is not needed) and the NumPy globals that rebuild
an array; anything else, ``os.system`` say, is refused before it can run.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from fedvssl.core.errors import CheckpointError
from fedvssl.core.files import npy_header
from fedvssl.models.r3d import BACKBONE_PREFIX, PAPER_SIZE, R3D18, BackboneSize

try:  # NumPy 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import _reconstruct

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class Parameters:
    """Stand-in for Flower's ``Parameters``: pickle restores ``tensors`` and ``tensor_type``."""

    tensors: list[bytes]
    tensor_type: str


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name == "Parameters" and (module == "flwr" or module.startswith("flwr.")):
            return Parameters
        if (module, name) in _NUMPY_GLOBALS:
            return _reconstruct if name == "_reconstruct" else getattr(np, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def _read_member(data: bytes) -> np.ndarray:
    _, _, dtype, offset = npy_header(data)
    if not dtype.hasobject:
        return np.load(io.BytesIO(data), allow_pickle=False)
    return RestrictedUnpickler(io.BytesIO(data[offset:])).load()


def read_npz_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every member of an .npz, with object members unpickled under the restrictions above."""
    try:
        with zipfile.ZipFile(path) as z:
            return {n.removesuffix(".npy"): _read_member(z.read(n)) for n in z.namelist() if n.endswith(".npy")}
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable .npz ({e})") from None


def published_arrays(path: str | Path, members: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The ordered tensor list of a published FedVSSL file, whichever of the three layouts."""
    first = members.get("arr_0")
    if first is not None and first.dtype == object:
        if first.ndim == 0 and isinstance(first.item(), Parameters):  # layouts (a) and (c)
            return [np.load(io.BytesIO(b), allow_pickle=False) for b in first.item().tensors]
        if first.ndim == 1:  # layout (b)
            return [np.asarray(a) for a in first]
        raise CheckpointError(f"{path}: arr_0 holds {type(first.item()).__name__}, not Flower Parameters")
    names = sorted((n for n in members if n.startswith("arr_")), key=lambda n: int(n[4:]))
    return [members[n] for n in names]


def backbone_keys(size: BackboneSize = PAPER_SIZE) -> list[tuple[str, tuple[int, ...]]]:
    return [(BACKBONE_PREFIX + k, tuple(v.shape)) for k, v in R3D18(size=size).state_dict().items()]


def assign_backbone(
    path: str | Path, arrays: list[np.ndarray], size: BackboneSize = PAPER_SIZE
) -> dict[str, np.ndarray]:
    """Name the first arrays (120 for R3D-18) as the CtP backbone, checking every shape and casting dtypes."""
    keys = backbone_keys(size)
    if len(arrays) < len(keys):
        raise CheckpointError(f"{path}: {len(arrays)} arrays, a backbone needs {len(keys)}")
    state = {}
    for i, ((key, shape), arr) in enumerate(zip(keys, arrays, strict=False)):
        if tuple(arr.shape) != shape:
            raise CheckpointError(f"{path}: entry {i} ({key}) has shape {tuple(arr.shape)}, expected {shape}")
        if key.endswith("num_batches_tracked"):
            state[key] = np.asarray(np.rint(arr), dtype=np.int64)
        else:
            state[key] = np.asarray(arr, dtype=np.float32)
    return state


def load_backbone_state(path: str | Path, size: BackboneSize = PAPER_SIZE) -> dict[str, np.ndarray]:
    """The named backbone arrays of any supported checkpoint (120 for R3D-18; ``size``: ``model``).

    Supported: our ``checkpoints/round-<r>.npz`` (named arrays), the published FedVSSL
    ``.npz`` files, and torch files holding a torchvision ``r3d_18`` or a CtP-layout
    state_dict (read with ``weights_only=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.suffix in (".pt", ".pth"):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: not a weights-only torch file ({e})") from None
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        if not isinstance(sd, Mapping):
            raise CheckpointError(f"{path}: expected a state_dict")
        tensors = [v for k, v in sd.items() if not k.startswith(("fc.", "cls_head.", "head.", "vcop_head."))]
        return assign_backbone(path, [t.numpy() for t in tensors], size)
    members = read_npz_arrays(path)
    if any(k.startswith(BACKBONE_PREFIX) for k in members):  # ours: names are kept
        keys = backbone_keys(size)
        missing = [k for k, _ in keys if k not in members]
        if missing:
            raise CheckpointError(f"{path}: missing backbone entry {missing[0]} (a backbone of another model size?)")
        return assign_backbone(path, [members[k] for k, _ in keys], size)
    return assign_backbone(path, published_arrays(path, members), size)


def to_torchvision(state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Rename to torchvision ``r3d_18`` keys by position (same order, same shapes; no fc)."""
    from torchvision.models.video import r3d_18

    tv_keys = [k for k in r3d_18().state_dict() if not k.startswith("fc.")]
    return {tk: torch.from_numpy(np.asarray(v)) for tk, v in zip(tv_keys, state.values(), strict=True)}
