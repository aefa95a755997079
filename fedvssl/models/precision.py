"""Mixed precision and memory format, one set of values for every path that runs the model.

Client training, retrieval features and fine-tuning take a :class:`Precision`
(``runtime.precision``) and use the helpers here, so the three paths cannot drift:

- ``amp_dtype``: ``none`` (fp32), ``bf16`` or ``fp16`` autocast on the model's device type
  (bf16 works on CPUs too; fp16 training goes through a gradient scaler);
- ``channels_last``: channels_last_3d memory format for the model and its 5-D inputs;
- ``cudnn_benchmark``: let cuDNN pick the fastest convolution for each input shape;
- ``compile``: ``torch.compile`` the backbone (in place, so its state_dict keeps its names).

Pinned host memory and non-blocking copies come with a CUDA device (:func:`pin_memory`,
:func:`to_device`). The defaults are plain fp32 and change nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """``runtime.precision``: how the model computes (fp32 and the default format unless set)."""

    amp_dtype: str = "none"  # none, bf16 or fp16
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"runtime.precision.amp_dtype={self.amp_dtype} must be one of {', '.join(AMP_DTYPES)}")


FP32 = Precision()


def pin_memory(device: torch.device) -> bool:
    """DataLoaders pin their batches only for a CUDA device (pinning is useless, and warns, elsewhere)."""
    return device.type == "cuda"


def prepare(model: nn.Module, p: Precision, device: torch.device | str) -> nn.Module:
    """Move ``model`` to ``device`` in ``p``'s memory format, compile its backbone if asked; returns it.

    Call it after loading weights: ``compile`` wraps the backbone's ``__call__`` in place,
    so the module and its state_dict keys stay the same objects.
    """
    torch.backends.cudnn.benchmark = p.cudnn_benchmark
    model.to(device)
    if p.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if p.compile:
        getattr(model, "backbone", model).compile()
    return model


def to_input(x: torch.Tensor, p: Precision, device: torch.device | str) -> torch.Tensor:
    """One tensor to ``device``, non-blocking (from pinned memory it overlaps with compute), clips in ``p``'s format."""
    x = x.to(device, non_blocking=True)
    if p.channels_last and x.dim() == 5 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def to_device(batch: dict, p: Precision, device: torch.device | str) -> dict:
    """Every tensor of a batch through :func:`to_input`; other values as they are."""
    return {k: to_input(v, p, device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@contextlib.contextmanager
def autocast(p: Precision, device: torch.device | str) -> Iterator[None]:
    """``torch.autocast`` on ``device``'s type in ``p.amp_dtype``; nothing at all for fp32."""
    dtype = AMP_DTYPES[p.amp_dtype]
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield


def grad_scaler(p: Precision, device: torch.device | str) -> torch.amp.GradScaler:
    """A loss scaler for fp16 training (bf16 and fp32 need none: then it passes everything through)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=p.amp_dtype == "fp16")
