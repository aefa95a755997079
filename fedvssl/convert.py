"""Convert a backbone checkpoint between fedvssl's .npz and torchvision's ``r3d_18``.

``python -m fedvssl.convert IN OUT``: IN is any checkpoint ``load_backbone_state``
reads (ours, a published FedVSSL ``round-540.npz`` of any layout, or a torchvision
``.pt``); OUT ending in ``.pt``/``.pth`` gets a torchvision ``r3d_18`` state_dict
(without ``fc``), OUT ending in ``.npz`` gets fedvssl's named backbone arrays.

BatchNorm eps: CtP's R3D-18 uses eps 1e-3, torchvision's 1e-5. The weights convert
exactly, but to reproduce fedvssl's outputs in torchvision set every BatchNorm3d's
``eps = 1e-3`` after loading (and load with ``strict=False``: there is no ``fc``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fedvssl.core.errors import CheckpointError, one_line_errors
from fedvssl.core.files import save_npz
from fedvssl.models.checkpoints import load_backbone_state, to_torchvision

BN_NOTE = "note: set BatchNorm3d eps=1e-3 in torchvision's r3d_18 to match fedvssl (CtP) outputs exactly"


def convert(src: Path, dst: Path) -> None:
    state = load_backbone_state(src)
    if dst.suffix in (".pt", ".pth"):
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.save(to_torchvision(state), dst)
    elif dst.suffix == ".npz":
        save_npz(dst, state)
    else:
        raise CheckpointError(f"{dst}: the output must end in .pt, .pth or .npz")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    a = p.parse_args(argv)
    one_line_errors(convert)(a.src, a.dst)
    print(f"wrote {a.dst}")
    if a.dst.suffix in (".pt", ".pth"):
        print(BN_NOTE)


if __name__ == "__main__":
    main()
