"""Mixed precision and memory format, one set of values for every path that runs the model.

Client training, retrieval features and fine-tuning take a :class:`Precision`
(``runtime.precision``) and use the helpers here, so the three paths cannot drift:

- ``amp_dtype``: ``none`` (fp32), ``bf16`` or ``fp16`` autocast on the model's device type
  (fp16 training goes through a gradient scaler), or ``auto``: bf16 where the device computes
  it natively (:func:`native_bf16`), fp32 elsewhere. A CPU without bf16 instructions emulates
  it far slower than fp32 (per demo step, 2026-12-06: 25x with oneDNN limited to AVX2, 2x to AVX-512);
- ``channels_last``: channels_last_3d memory format for the model and its 5-D inputs;
- ``cudnn_benchmark``: let cuDNN pick the fastest convolution for each input shape;
- ``compile``: ``torch.compile`` the backbone (in place, so its state_dict keeps its names).

Pinned host memory and non-blocking copies come with a CUDA device (:func:`pin_memory`,
:func:`to_device`). The defaults are plain fp32 and change nothing. :class:`Compute` holds a
device and a precision together, for the downstream paths.

The backbone's convolutions are :class:`Conv3d`: under bf16 autocast on the CPU, a
convolution whose kernel is larger than its input in some dimension pads its input
explicitly, because oneDNN's bf16 weight gradient is wrong there (see the class).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedvssl.models.device import device_of

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": None}


@dataclass(frozen=True)
class Precision:
    """``runtime.precision``: how the model computes (fp32 and the default format unless set)."""

    amp_dtype: str = "none"  # none, bf16, fp16 or auto
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
    dtype = AMP_DTYPES[resolved_amp_dtype(p.amp_dtype, device)]
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU that supports it, an x86 CPU with
    AVX512-BF16 or AMX-BF16 (Zen 4, Sapphire Rapids and later). Other CPUs: not measured, no."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities()
    return kind == "cpu" and bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolved_amp_dtype(amp_dtype: str, device: torch.device | str) -> str:
    """``amp_dtype`` as it computes on ``device``: ``auto`` becomes ``bf16`` or ``none``."""
    if amp_dtype == "auto":
        return "bf16" if native_bf16(device) else "none"
    return amp_dtype


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state_dict) that pads explicitly where CPU bf16 needs it.

    Where zero padding lets the kernel be larger than its input in some dimension (R3D's
    3-deep kernels on 2-frame maps: layer3 of the 8-frame demo, layer4 of 16-frame R3D-18),
    oneDNN's CPU bf16 backward-weights kernel (``jit_bf16:avx512_core_bf16``, torch 2.14.1)
    reads memory it never wrote: the weight gradient is garbage (relative error ~1 against
    fp64) or NaN, depending on what the allocator hands it, while the forward pass and the
    input gradient are right. Measured over 280 shapes (depths 1-8, kernels 1-5, paddings,
    strides; 2026-12-06): wrong exactly where the input is shallower than the kernel and the
    output deeper than 1. The same convolution on an input padded beforehand (then no longer
    smaller than the kernel) is the same arithmetic, and right in bf16 in all 912 such cases
    tried; fp32 never needed it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and overhangs(x, self.kernel_size):
            pt, ph, pw = self.padding  # R3D's convolutions: int paddings, zeros mode
            x = F.pad(x, (pw, pw, ph, ph, pt, pt))
            return F.conv3d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return super().forward(x)


def overhangs(x: torch.Tensor, kernel: tuple[int, ...]) -> bool:
    """Whether a kernel is larger than the input ``x`` [N, C, T, H, W] in some dimension."""
    return any(size < k for size, k in zip(x.shape[2:], kernel, strict=True))


def grad_scaler(p: Precision, device: torch.device | str) -> torch.amp.GradScaler:
    """A loss scaler for fp16 training (bf16 and fp32 need none: then it passes everything through)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=p.amp_dtype == "fp16")


@dataclass(frozen=True)
class Compute:
    """Where and how a model computes: a device (``auto`` resolved) and a :class:`Precision`.

    The downstream paths take one of these rather than a (device, precision) pair and ask it
    for each step, so the pair is resolved once per run and cannot drift between the steps.
    """

    device: torch.device
    precision: Precision = FP32

    @classmethod
    def on(cls, device: str | torch.device, precision: Precision = FP32) -> Compute:
        """``runtime.device`` (cpu, cuda, cuda:N or auto) in ``precision``."""
        return cls(device_of(str(device)), precision)

    @property
    def pin_memory(self) -> bool:
        return pin_memory(self.device)

    def prepare(self, model: nn.Module) -> nn.Module:
        return prepare(model, self.precision, self.device)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return to_input(x, self.precision, self.device)

    def batch(self, batch: dict) -> dict:
        return to_device(batch, self.precision, self.device)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return autocast(self.precision, self.device)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return grad_scaler(self.precision, self.device)


CPU = Compute(torch.device("cpu"))
