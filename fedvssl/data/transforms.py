"""Clip transforms as tensor operations, one parameter draw per clip.

They mirror CtP's Group* transforms (see docs/data.md, "Samplers and augmentations") but act on a
whole clip at once: a clip is a float tensor [T, 3, H, W] with values in [0, 255]
until :func:`normalize` turns it into the model's [3, T, H, W] input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# In [0, 255] and shaped for the [3, T, H, W] output, built once rather than per clip.
_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255.0
_STD_255 = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255.0
_HSV_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)
# Pixel sizes in the configs are given at the reference's 112 crop; they scale with the run's crop.
REFERENCE_CROP = 112


def crop_scale(crop: int) -> float:
    """How much a size given at the reference 112 crop grows or shrinks at a ``crop`` crop."""
    return crop / REFERENCE_CROP


def at_crop(size: float, crop: int, minimum: int = 1) -> int:
    """A pixel size given at the reference 112 crop, at a ``crop`` crop (at least ``minimum``)."""
    return max(minimum, round(size * crop / REFERENCE_CROP))


def to_clip(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] RGB frames -> float [T, 3, H, W] in [0, 255]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()


def resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of every frame (OpenCV's INTER_LINEAR convention)."""
    if clip.shape[-2:] == (height, width):
        return clip
    return F.interpolate(clip, size=(height, width), mode="bilinear", align_corners=False)


def resize_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the short side equals ``size``, keeping the aspect ratio."""
    h, w = clip.shape[-2:]
    if h <= w:
        return resize(clip, size, max(1, round(w * size / h)))
    return resize(clip, max(1, round(h * size / w)), size)


def random_crop(clip: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    h, w = clip.shape[-2:]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return clip[..., top : top + size, left : left + size]


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    h, w = clip.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return clip[..., top : top + size, left : left + size]


def random_flip(clip: torch.Tensor, p: float, rng: np.random.Generator) -> torch.Tensor:
    return clip.flip(-1) if rng.random() < p else clip


def random_flip_crop(clip: torch.Tensor, size: int, p: float, rng: np.random.Generator) -> torch.Tensor:
    """:func:`random_flip` then :func:`random_crop`: the same draws and pixels, but only the crop is
    flipped (the mirrored window of the unflipped clip). A flipped crop is a contiguous copy, an
    unflipped one a view: the jitters and :func:`normalize` read it in place, without a copy first."""
    flip = rng.random() < p
    h, w = clip.shape[-2:]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    if flip:
        left = w - size - left
    crop = clip[..., top : top + size, left : left + size]
    return crop.flip(-1) if flip else crop


def random_brightness(clip: torch.Tensor, p: float, delta: float, rng: np.random.Generator) -> torch.Tensor:
    if rng.random() >= p:
        return clip
    return (clip + rng.uniform(-delta, delta)).clamp_(0, 255)


def random_contrast(clip: torch.Tensor, p: float, delta: float, rng: np.random.Generator) -> torch.Tensor:
    if rng.random() >= p:
        return clip
    return (clip * math.exp(rng.uniform(-delta, delta))).clamp_(0, 255)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """OpenCV 8-bit convention: H in [0, 180), S and V in [0, 255]."""
    r, g, b = rgb.unbind(-3)
    low, v = torch.aminmax(rgb, dim=-3)  # one pass for both
    c = v - low
    s = torch.where(v > 0, 255.0 * c / v.clamp(min=1e-6), torch.zeros_like(v))
    safe_c = c.clamp(min=1e-6)
    h = torch.where(
        v == r,
        60.0 * (g - b) / safe_c,
        torch.where(v == g, 120.0 + 60.0 * (b - r) / safe_c, 240.0 + 60.0 * (r - g) / safe_c),
    )
    h = torch.where(c > 0, torch.remainder(h, 360.0), torch.zeros_like(h)) / 2.0
    return torch.stack((h, s, v), dim=-3)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(-3)
    h = h * 2.0 / 60.0
    c = v * s / 255.0
    # k = (n + h) mod 6 for n = 5, 3, 1, written in place into one [..., 3, H, W] tensor.
    k = torch.add(h.unsqueeze(-3), _HSV_OFFSETS).remainder_(6.0)
    return v.unsqueeze(-3) - torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0).mul_(c.unsqueeze(-3))


def random_hue_saturation(
    clip: torch.Tensor, p: float, hue_delta: float, sat_delta: float, rng: np.random.Generator
) -> torch.Tensor:
    """CtP's RandomHueSaturation: the hue is shifted and *clipped* (not wrapped)."""
    if rng.random() >= p:
        return clip
    hsv = _rgb_to_hsv(clip.contiguous())  # half the time of the same arithmetic on a strided crop
    h = (hsv[:, 0] + rng.uniform(-hue_delta, hue_delta)).clamp_(0, 179)
    s = (hsv[:, 1] * math.exp(rng.uniform(-sat_delta, sat_delta))).clamp_(0, 255)
    hsv = torch.stack((h, s, hsv[:, 2]), dim=1).round_()
    return _hsv_to_rgb(hsv).clamp_(0, 255)


def normalize(clip: torch.Tensor) -> torch.Tensor:
    """[T, 3, H, W] in [0, 255] -> ImageNet-normalised [3, T, H, W]."""
    # (clip - mean) / std, written straight into the [3, T, H, W] layout: one pass over the
    # (often strided) clip instead of three copies.
    t, _, h, w = clip.shape
    out = torch.empty((3, t, h, w), dtype=torch.float32)
    torch.sub(clip.permute(1, 0, 2, 3), _MEAN_255, out=out)
    return out.div_(_STD_255)


def test_view(frames: np.ndarray, resize_hw: tuple[int, int], crop: int) -> torch.Tensor:
    """The evaluation view: fixed resize, then one centre crop."""
    return normalize(center_crop(resize(to_clip(frames), *resize_hw), crop))
