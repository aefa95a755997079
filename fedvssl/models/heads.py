"""Heads shared by the pretext tasks and fine-tuning."""

from __future__ import annotations

import torch
from torch import nn


class ClsHead(nn.Module):
    """TSN classification head; ``fc_cls`` is its only state (2 entries)."""

    def __init__(self, num_classes: int, dropout: float, in_channels: int = 512) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, 0.0, 0.001)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.fc_cls(self.dropout(self.pool(feat).flatten(1)))
