"""R3D-18 backbone in CtP's exact state_dict layout.

The module names follow CtP (``stem.conv``, ``layerN.M.conv1.conv``, ``bn1``,
``downsample_bn`` ...), so checkpoints of CtP and FedVSSL load key for key, and the
120 entries come in the same order as torchvision's ``r3d_18``. BatchNorm uses
eps 1e-3 as in CtP, convolutions have no bias and the stem has no max-pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedvssl.models.precision import Conv3d

BACKBONE_PREFIX = "backbone."
_BN_EPS = 1e-3


def _conv(cin: int, cout: int, kernel, stride, padding) -> nn.Sequential:
    # CtP wraps each Conv3d in a Sequential under the name "conv". Conv3d: nn.Conv3d that
    # pads explicitly where CPU bf16 autocast would get its weight gradient wrong.
    seq = nn.Sequential()
    seq.add_module("conv", Conv3d(cin, cout, kernel, stride, padding, bias=False))
    return seq


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with an identity or 1x1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm3d(cout, eps=_BN_EPS)
        self.conv2 = _conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm3d(cout, eps=_BN_EPS)
        if stride != (1, 1, 1) or cin != cout:
            self.downsample = _conv(cin, cout, 1, stride, 0)
            self.downsample_bn = nn.BatchNorm3d(cout, eps=_BN_EPS)
        else:
            self.downsample = None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample_bn(self.downsample(x))
        return self.relu(out + identity)


@dataclass(frozen=True)
class BackboneSize:
    """``model``: the backbone's width (stem channels) and residual blocks per stage."""

    width: int = 64
    blocks: int = 2


PAPER_SIZE = BackboneSize()  # R3D-18


class R3D18(nn.Module):
    """R3D-18 feature extractor returning the layer4 map [B, 8 * width, T', H', W'].

    The defaults (``width=64``, ``blocks=2``) are the paper's R3D-18 with 512 output
    channels. ``width`` and ``blocks`` (per stage) shrink the same network for the CPU
    demo (``model=small``: width 16, one block per stage, a 10-layer R3D), which learns
    its pretext task within minutes where the full network needs hours on a CPU.

    ``ctp_strides=True`` gives CtP's pretraining configuration, where layer4 only
    downsamples in time (stride (2,1,1)), keeping a 14x14 map for RoIAlign on
    112x112 inputs. Strides do not change parameter shapes, so weights move freely
    between the two configurations.
    """

    def __init__(self, ctp_strides: bool = False, size: BackboneSize = PAPER_SIZE) -> None:
        super().__init__()
        width, blocks = size.width, size.blocks
        self.ctp_strides = ctp_strides
        self.out_channels = 8 * width
        self.stem = nn.Sequential()
        self.stem.add_module("conv", Conv3d(3, width, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False))
        self.stem.add_module("bn", nn.BatchNorm3d(width, eps=_BN_EPS))
        self.stem.add_module("relu", nn.ReLU(inplace=True))
        spatial = (False, True, True, not ctp_strides)
        temporal = (False, True, True, True)
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = (2 if temporal[i] else 1, *(2 if spatial[i] else 1,) * 2)
            rest = [BasicBlock(cout, cout, (1, 1, 1)) for _ in range(blocks - 1)]
            layer = nn.Sequential(BasicBlock(cin, cout, stride), *rest)
            self.add_module(f"layer{i + 1}", layer)
            cin = cout
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CtP's init: Kaiming normal (fan_out, relu) for convs, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_backbone(backbone: R3D18, state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
    """Strictly load a backbone from a state (tensors or arrays) that may carry the ``backbone.`` prefix."""
    state = {k: torch.as_tensor(v) for k, v in state.items()}
    stripped = {k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    backbone.load_state_dict(stripped or state, strict=True)


def seeded_backbone(state: Mapping[str, np.ndarray] | None, seed: int, size: BackboneSize = PAPER_SIZE) -> R3D18:
    """The standard-stride backbone of the downstream protocol: loaded from ``state``, or (``None``)
    the random init drawn from ``seed`` (torch's global generator left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = R3D18(ctp_strides=False, size=size)
    if state is not None:
        load_backbone(backbone, state)
    return backbone
