"""Transform chains, one class per chain (as torchvision's references ``presets.py``).

:class:`TrainPreset` is the training augmentation of Speed and of supervised
fine-tuning: one resize drawn per clip, flip, random crop, then the per-pixel jitters
(brightness, contrast, hue/saturation) and normalisation. The two differ only in how
the resize is given: short sides (Speed) or fixed ``(height, width)`` pairs
(fine-tuning, CtP's ``scales_wh``). The evaluation view is :func:`transforms.test_view`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedvssl.data import transforms as T


class TrainPreset:
    """Resize (one size drawn per clip), flip, crop, brightness, contrast, hue/saturation, normalise."""

    def __init__(
        self,
        sizes: Sequence[int] | Sequence[tuple[int, int]],
        crop: int,
        flip_p: float,
        brightness: tuple[float, float],
        contrast: tuple[float, float],
        hue_saturation: tuple[float, float, float],
    ) -> None:
        self.sizes = [s if isinstance(s, int) else tuple(s) for s in sizes]
        self.crop, self.flip_p = crop, flip_p
        self.brightness, self.contrast = tuple(brightness), tuple(contrast)
        self.hue_saturation = tuple(hue_saturation)

    @classmethod
    def at_reference(cls, sizes: Sequence[int] | Sequence[tuple[int, int]], crop: int, *rest: Any) -> TrainPreset:
        """The preset for resize ``sizes`` given at the reference 112 crop, as the configs give them:
        scaled to ``crop``, never below it. ``rest``: the flip probability and the jitters, as above."""
        scaled = [
            T.at_crop(s, crop, crop) if isinstance(s, int) else tuple(T.at_crop(x, crop, crop) for x in s)
            for s in sizes
        ]
        return cls(scaled, crop, *rest)

    def resize(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if isinstance(self.sizes[0], int):  # short sides, as CtP's GroupScale for Speed
            return T.resize_short_side(clip, int(rng.choice(self.sizes)))
        return T.resize(clip, *self.sizes[int(rng.integers(len(self.sizes)))])  # fixed (h, w), as MultiScaleCrop

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Decoded frames [T, H, W, 3] -> the model's normalised [3, T, crop, crop] input."""
        clip = self.resize(T.to_clip(frames), rng)
        # Cropping before the per-pixel jitters gives the same result as the reference
        # order (jitter, then crop) at a fraction of the cost; so does flipping only the crop.
        clip = T.random_flip_crop(clip, self.crop, self.flip_p, rng)
        clip = T.random_brightness(clip, *self.brightness, rng)
        clip = T.random_contrast(clip, *self.contrast, rng)
        clip = T.random_hue_saturation(clip, *self.hue_saturation, rng)
        return T.normalize(clip)
