"""Where the model and its batches run."""

from __future__ import annotations

import torch


def device_of(name: str) -> torch.device:
    """``runtime.device``: cpu, cuda, cuda:N, or auto (cuda where available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
