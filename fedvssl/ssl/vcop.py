"""Video Clip Order Prediction (VCOP): which of the 6 orders were 3 clips shuffled into?

Three clips of consecutive frames, 8 frames apart, share one augmentation draw;
the backbone embeds each, a pairwise MLP compares every pair, and a linear layer
over the three pair features predicts the permutation.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedvssl.data import transforms as T
from fedvssl.data.samplers import read_clip
from fedvssl.data.transforms import at_crop
from fedvssl.data.video import VideoReader
from fedvssl.ssl.base import PretextModel, SSLMethod

PERMUTATIONS = list(itertools.permutations(range(3)))  # lexicographic, 6 classes
PAIRS = ((0, 1), (0, 2), (1, 2))


class VCOPHead(nn.Module):
    """``fc1`` on each clip pair (1024 -> 512), ``fc2`` on the 3 pair features (1536 -> 6)."""

    def __init__(self, dropout: float, channels: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * channels, channels)
        self.fc2 = nn.Linear(channels * len(PAIRS), len(PERMUTATIONS))
        self.dropout = nn.Dropout(dropout)
        nn.init.kaiming_normal_(self.fc1.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc1.bias)
        nn.init.normal_(self.fc2.weight, 0.0, 0.001)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``feats`` [B, 3, 512] -> logits [B, 6]."""
        pairs = [F.relu(self.fc1(torch.cat([feats[:, i], feats[:, j]], dim=1))) for i, j in PAIRS]
        return self.fc2(self.dropout(torch.cat(pairs, dim=1)))


class VCOP(SSLMethod):
    head_name = "vcop_head"
    chance_loss = math.log(len(PERMUTATIONS))

    def __init__(
        self,
        clip_len: int,
        crop_size: int,
        optimizer: dict[str, float],
        interval: int,
        resize_hw: list[int],
        dropout: float,
        backbone: dict[str, int] | None = None,
    ) -> None:
        super().__init__(clip_len, crop_size, optimizer, backbone)
        self.interval = int(interval)
        self.resize_hw = tuple(at_crop(s, self.crop_size, minimum=self.crop_size) for s in resize_hw)
        self.dropout = dropout

    def build_head(self) -> nn.Module:
        return VCOPHead(self.dropout, self.feature_channels)

    def clip_starts(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """Start frames of the 3 clips (CtP's ``_sample_indices``)."""
        n, length = num_frames, self.clip_len
        avg = (n - 3 * length) // 2
        if avg > 0:
            interval = min(avg, self.interval)
            start = int(rng.integers(0, n - 3 * length - 2 * interval + 1))
            return start + np.arange(3) * (length + interval)
        if n < length:
            return np.zeros(3, dtype=np.int64)
        tick = (n - length + 1) / 3
        return np.array([int(tick / 2 + tick * k) for k in range(3)])

    def sample(self, reader: VideoReader, path: str, num_frames: int, rng: np.random.Generator) -> dict[str, Any]:
        starts = self.clip_starts(num_frames, rng)
        idx = np.minimum(starts[:, None] + np.arange(self.clip_len), num_frames - 1).reshape(-1)
        clip = T.random_crop(T.resize(T.to_clip(read_clip(reader, path, idx)), *self.resize_hw), self.crop_size, rng)
        clips = T.normalize(clip).view(3, 3, self.clip_len, self.crop_size, self.crop_size).transpose(0, 1)
        label = int(rng.integers(len(PERMUTATIONS)))
        return {"imgs": clips[list(PERMUTATIONS[label])].contiguous(), "label": label}

    def loss(self, model: PretextModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        imgs = batch["imgs"]  # [B, 3, C, T, H, W]
        b = imgs.shape[0]
        feats = model.backbone(imgs.flatten(0, 1)).mean(dim=(2, 3, 4)).view(b, 3, -1)
        logits = model.pretext_head(feats)
        loss = F.cross_entropy(logits, batch["label"])
        return loss, {"accuracy": (logits.argmax(1) == batch["label"]).float().mean().item()}
