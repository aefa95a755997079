"""Where the model and its batches run."""

from __future__ import annotations

import torch


def device_of(name: str) -> torch.device:
    """``runtime.device``: cpu, cuda, cuda:N, or auto (cuda where available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
