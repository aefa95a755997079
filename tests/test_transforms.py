"""Clip transforms and samplers against the reference rules."""

import colorsys

import numpy as np
import pytest
import torch

from fedvssl.data import transforms as T
from fedvssl.data.samplers import random_clip_indices


def test_hsv_matches_opencv_convention_and_round_trips():
    rgb = torch.randint(0, 256, (4, 3, 6, 5)).float()
    hsv = T._rgb_to_hsv(rgb)
    r, g, b = (rgb[1, :, 2, 3] / 255).tolist()
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    torch.testing.assert_close(hsv[1, :, 2, 3], torch.tensor([h * 180, s * 255, v * 255]), atol=1e-3, rtol=0)
    torch.testing.assert_close(T._hsv_to_rgb(hsv), rgb, atol=1e-3, rtol=0)


class FixedDraws:
    """Always applies the jitter, always with the given extreme of each range."""

    def __init__(self, low: bool):
        self.low = low

    def random(self):
        return 0.0

    def uniform(self, a, b):
        return a if self.low else b


def test_hue_is_clipped_not_wrapped():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 200.0  # hue 0: shifting it down must clip at 0, not wrap round to magenta
    out = T.random_hue_saturation(red, 1.0, 12, 0.0, FixedDraws(low=True))
    torch.testing.assert_close(out, red)
    shifted = T.random_hue_saturation(red, 1.0, 12, 0.0, FixedDraws(low=False))
    assert shifted[0, 1].min() > 50 and shifted[0, 2].max() < 1  # +12 (24 degrees): towards orange


def test_geometry():
    clip = torch.arange(2 * 3 * 10 * 20, dtype=torch.float32).view(2, 3, 10, 20)
    assert T.resize_short_side(clip, 5).shape[-2:] == (5, 10)
    crop = T.random_crop(clip, 8, np.random.default_rng(1))
    assert crop.shape[-2:] == (8, 8)
    assert T.center_crop(clip, 4)[0, 0, 0, 0] == clip[0, 0, 3, 8]
    torch.testing.assert_close(T.random_flip(clip, 1.0, np.random.default_rng(0)), clip.flip(-1))
    assert T.random_flip(clip, 0.0, np.random.default_rng(0)) is clip


def test_brightness_and_contrast_stay_in_range():
    clip = torch.full((1, 3, 4, 4), 250.0)
    assert T.random_brightness(clip, 1.0, 32, np.random.default_rng(3)).max() <= 255
    assert T.random_contrast(clip, 1.0, 0.2, np.random.default_rng(3)).max() <= 255


def test_normalize_layout():
    clip = torch.rand(8, 3, 16, 16) * 255
    out = T.normalize(clip)
    assert out.shape == (3, 8, 16, 16)
    mean = torch.tensor(T.IMAGENET_MEAN)[0] * 255
    torch.testing.assert_close(out[0, 2], (clip[2, 0] - mean) / (T.IMAGENET_STD[0] * 255))


def _reference_chain(frames, preset, rng):
    """TrainPreset's chain in the reference order, one primitive per step, as written before
    the flip moved onto the crop and normalisation into one pass."""
    clip = preset.resize(T.to_clip(frames), rng)
    clip = T.random_crop(T.random_flip(clip, preset.flip_p, rng), preset.crop, rng)
    clip = T.random_brightness(clip, *preset.brightness, rng)
    clip = T.random_contrast(clip, *preset.contrast, rng)
    clip = T.random_hue_saturation(clip, *preset.hue_saturation, rng)
    mean = torch.tensor(T.IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(T.IMAGENET_STD).view(1, 3, 1, 1) * 255.0
    return ((clip - mean) / std).permute(1, 0, 2, 3).contiguous()


@pytest.mark.parametrize("sizes", [[20, 24], [(20, 27), (24, 30)]], ids=["short-side", "fixed-hw"])
def test_train_preset_is_bit_identical_to_the_reference_chain(sizes):
    """The fast chain (flip only the crop, normalise in one pass, hue on a contiguous crop) changes
    the order of the work, never a value: every pixel equals the reference chain's, draw for draw."""
    from fedvssl.data.presets import TrainPreset

    # Every jitter drawn half of the time, so the 40 clips cover each branch both ways.
    preset = TrainPreset(sizes, 16, 0.5, (0.5, 32), (0.5, 0.2), (0.5, 12, 0.1))
    frames = np.random.default_rng(0).integers(0, 256, (40, 4, 30, 41, 3), dtype=np.uint8)
    for seed, clip in enumerate(frames):
        fast = preset(clip, np.random.default_rng(seed))
        assert fast.is_contiguous() and fast.shape == (3, 4, 16, 16)
        assert torch.equal(fast, _reference_chain(clip, preset, np.random.default_rng(seed))), seed


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_flip_crop_is_the_crop_of_the_flipped_clip(p):
    clip = torch.rand(2, 3, 10, 20)
    rng = np.random.default_rng(4)
    expected = T.random_crop(T.random_flip(clip, p, rng), 8, rng)
    assert torch.equal(T.random_flip_crop(clip, 8, p, np.random.default_rng(4)), expected)


@pytest.mark.parametrize("jitter", [False, True])
def test_random_clip_sampler(jitter):
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = random_clip_indices(100, 16, [1, 2, 3, 4, 5], jitter, rng)
        assert len(idx) == 16 and idx.min() >= 0 and idx.max() <= 99
        steps = np.diff(idx)
        if not jitter:
            assert len(set(steps.tolist())) == 1 and 1 <= steps[0] <= 5
    short = random_clip_indices(10, 16, [2], False, rng)
    assert short[0] == 0 and short.max() == 9
