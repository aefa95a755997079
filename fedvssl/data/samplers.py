"""Which frames a clip is made of: CtP's frame samplers, and decoding the chosen frames."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedvssl.data.video import VideoReader, sorted_frames


def random_clip_indices(
    num_frames: int, clip_len: int, strides: Sequence[int], temporal_jitter: bool, rng: np.random.Generator
) -> np.ndarray:
    """CtP's RandomFrameSampler for one clip: random stride, start, optional per-frame jitter."""
    stride = int(rng.choice(list(strides)))
    jitter = rng.integers(0, stride, size=clip_len) if temporal_jitter and stride > 1 else np.zeros(clip_len, int)
    span = stride * (clip_len - 1) + 1
    start = int(rng.integers(0, num_frames - span + 1)) if span < num_frames else 0
    return np.minimum(start + np.arange(clip_len) * stride + jitter, num_frames - 1)


def uniform_clip_starts(num_frames: int, clip_len: int, stride: int, num_clips: int) -> np.ndarray:
    """CtP's UniformFrameSampler offsets (base = clip_len * stride, as in the reference)."""
    delta = num_frames - clip_len * stride + 1
    if delta <= 0:
        return np.zeros(num_clips, dtype=np.int64)
    tick = delta / num_clips
    return np.array([int(tick / 2.0 + tick * k) for k in range(num_clips)], dtype=np.int64)


def read_clip(reader: VideoReader, path: str, indices: np.ndarray) -> np.ndarray:
    """A clip's frames in the order asked: each distinct frame decoded once, in sorted order
    (:func:`~fedvssl.data.video.sorted_frames`), or, from a reader that takes indices in any order
    (``any_order``: whole videos held in memory), as they are, without sorting and gathering twice.
    """
    if getattr(reader, "any_order", False):
        return reader.get_frames(path, indices)
    return sorted_frames(reader, path, indices)
