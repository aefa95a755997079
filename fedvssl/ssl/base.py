"""The interface every self-supervised pretext method implements.

A method owns everything that differs between pretext tasks: how a training
example is sampled and augmented from one video, the head, the loss and its
metrics, the optimiser defaults and the backbone stride configuration. The
federated client, the benchmarks and the tests talk to methods only through this
class, so a new method is one module plus one config file under ``conf/ssl/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedvssl.data.video import VideoReader
from fedvssl.models.r3d import R3D18, BackboneSize


class PretextModel(nn.Module):
    """Backbone first, then the head, so the state_dict starts with the 120 backbone entries."""

    def __init__(self, backbone: R3D18, head_name: str, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_name = head_name
        self.add_module(head_name, head)

    @property
    def pretext_head(self) -> nn.Module:
        return getattr(self, self.head_name)


class SSLMethod(ABC):
    """Base class of the pretext tasks (Speed, and the ones that follow)."""

    head_name: ClassVar[str]
    ctp_strides: ClassVar[bool] = False
    # The loss of a uniform guess, for classification pretexts (history.png draws it); None otherwise.
    chance_loss: ClassVar[float | None] = None

    def __init__(
        self, clip_len: int, crop_size: int, optimizer: Mapping[str, float], backbone: Mapping[str, int] | None = None
    ) -> None:
        self.clip_len = int(clip_len)
        self.crop_size = int(crop_size)
        self.optimizer = dict(optimizer)
        self.backbone = BackboneSize(**(backbone or {}))

    @property
    def feature_channels(self) -> int:
        """Channels of the backbone's output, the heads' input."""
        return 8 * self.backbone.width

    def build_model(self, seed: int) -> PretextModel:
        """The full model, initialised from ``seed`` so every client starts identically."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = R3D18(self.ctp_strides, self.backbone)
            return PretextModel(backbone, self.head_name, self.build_head())

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """A fresh SGD every local epoch: no optimiser state crosses rounds."""
        opt = self.optimizer
        return torch.optim.SGD(
            model.parameters(), lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"]
        )

    @abstractmethod
    def build_head(self) -> nn.Module:
        """The pretext head, with the reference initialisation."""

    @abstractmethod
    def sample(self, reader: VideoReader, path: str, num_frames: int, rng: np.random.Generator) -> dict[str, Any]:
        """One augmented training example from one video."""

    @abstractmethod
    def loss(self, model: PretextModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The total pretext loss and extra metrics (such as ``accuracy``) of one batch."""
