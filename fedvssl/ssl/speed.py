"""Playback-speed prediction (SpeedNet-style, as in CtP's ``speednet``).

A clip is sampled at one of seven playback strides, stride 0 repeating a frame and
negative strides playing backwards; the model predicts which one. The head is
CtP's TSN head: global average pool, dropout 0.5 and one linear layer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedvssl.data.presets import TrainPreset
from fedvssl.data.samplers import read_clip
from fedvssl.data.video import VideoReader
from fedvssl.models.heads import ClsHead
from fedvssl.ssl.base import PretextModel, SSLMethod

STRIDES = (-4, -2, -1, 0, 1, 2, 4)


class Speed(SSLMethod):
    head_name = "cls_head"
    chance_loss = math.log(len(STRIDES))

    def __init__(
        self,
        clip_len: int,
        crop_size: int,
        optimizer: dict[str, float],
        scales: list[int],
        flip_p: float,
        brightness: tuple[float, float],
        contrast: tuple[float, float],
        hue_saturation: tuple[float, float, float],
        dropout: float,
        backbone: dict[str, int] | None = None,
    ) -> None:
        super().__init__(clip_len, crop_size, optimizer, backbone)
        self.augment = TrainPreset.at_reference(scales, self.crop_size, flip_p, brightness, contrast, hue_saturation)
        self.dropout = dropout

    def build_head(self) -> nn.Module:
        return ClsHead(len(STRIDES), self.dropout, self.feature_channels)

    def indices(self, num_frames: int, label: int, rng: np.random.Generator) -> np.ndarray:
        """Frame indices of a clip played at ``STRIDES[label]``."""
        stride = STRIDES[label]
        step = abs(stride)
        span = (self.clip_len - 1) * step + 1
        start = int(rng.integers(0, max(num_frames - span, 0) + 1))
        idx = np.minimum(start + np.arange(self.clip_len) * step, num_frames - 1)
        return idx[::-1].copy() if stride < 0 else idx

    def sample(self, reader: VideoReader, path: str, num_frames: int, rng: np.random.Generator) -> dict[str, Any]:
        label = int(rng.integers(len(STRIDES)))
        idx = self.indices(num_frames, label, rng)
        if STRIDES[label] == 0:
            # One frame shown clip_len times: every augmentation step treats each frame alike (one
            # resize, crop window and jitter draw per clip), so augmenting the frame once and
            # repeating it gives the same values for an eighth of the work (a seventh of all clips).
            one = self.augment(read_clip(reader, path, idx[:1]), rng)
            return {"imgs": one.expand(-1, self.clip_len, -1, -1).contiguous(), "label": label}
        return {"imgs": self.augment(read_clip(reader, path, idx), rng), "label": label}

    def loss(self, model: PretextModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model.pretext_head(model.backbone(batch["imgs"]))
        loss = F.cross_entropy(logits, batch["label"])
        accuracy = (logits.argmax(1) == batch["label"]).float().mean().item()
        return loss, {"accuracy": accuracy}
