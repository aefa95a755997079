"""Torch datasets over video files.

Each item decodes just the frames it needs, from the video itself or from its entry
in a pre-decoded frame cache (``backend="cache"``, :mod:`fedvssl.data.frame_cache`).
A video that fails to decode while loading (or whose cache entry is missing or stale)
is replaced by the next usable one (deterministically), and the item says so in its
``bad`` field, so the training loop can count and report it; nothing crashes a client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from fedvssl.core.errors import DataError
from fedvssl.data import transforms as T
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.samplers import read_clip, uniform_clip_starts
from fedvssl.data.video import DECODED, VideoReader, WholeVideoReader, make_reader

log = logging.getLogger(__name__)
MAX_REPLACEMENTS = 10


class ExampleSampler(Protocol):
    """What :class:`PretextDataset` needs of a pretext method (every ``fedvssl.ssl`` method is one).

    A protocol rather than ``SSLMethod`` itself, so that the data stage does not import the ssl stage.
    """

    def sample(self, reader: VideoReader, path: str, num_frames: int, rng: np.random.Generator) -> dict[str, Any]: ...


class VideoDataset(Dataset):
    """Shared plumbing: one lazily opened reader per worker, deterministic replacement."""

    def __init__(self, records: Sequence[VideoRecord], backend: str, frame_cache: str | None = None) -> None:
        if not records:
            raise DataError("no usable videos to load")
        self.records = list(records)
        self.backend, self.frame_cache = backend, frame_cache
        self._reader: VideoReader | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def reader(self) -> VideoReader:
        if self._reader is None:
            self._reader = make_reader(self.backend, self.frame_cache)
            # A video listed many times (clips per video > 1) is decoded once, whole, and kept
            # for this process's later data sets (the next rounds of a client actor).
            if DECODED.max_bytes > 0 and len({r.path for r in self.records}) < len(self.records):
                self._reader = WholeVideoReader(self._reader, DECODED)
        return self._reader

    def load(self, i: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        error: Exception | None = None
        for step in range(MAX_REPLACEMENTS):
            j = (i + step) % len(self.records)
            try:
                item = self.load(j)
            except Exception as e:  # a broken file must not crash the client
                log.debug("cannot load %s: %s", self.records[j].path, e)
                error = e
                continue
            item["bad"] = -1 if step == 0 else i
            return item
        raise DataError(
            f"{self.records[i].path} and the next {MAX_REPLACEMENTS - 1} videos cannot be loaded; last error: {error!r}"
        ) from error


class PretextDataset(VideoDataset):
    """One augmented pretext example per video per epoch.

    Randomness comes from ``(seed, round, client, index)``, so a client draws new
    clips and augmentations every round, yet every run with the same seed repeats.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        method: ExampleSampler,
        backend: str,
        seed: Sequence[int],
        frame_cache: str | None = None,
    ) -> None:
        super().__init__(records, backend, frame_cache)
        self.method = method
        self.seed = tuple(int(s) for s in seed)

    def load(self, i: int) -> dict:
        rng = np.random.default_rng((*self.seed, i))
        path = self.records[i].path
        return self.method.sample(self.reader, path, self.reader.num_frames(path), rng)


class ClipsDataset(VideoDataset):
    """``num_clips`` uniformly spread test views per video: [clips, 3, T, H, W] and the label.

    ``resize_hw`` is given at the reference 112 crop, as the configs give it, and scales with ``crop``.

    A video that cannot be decoded is not replaced (that would duplicate another
    video in a retrieval gallery): its item has ``bad`` set and is dropped by the caller.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        clip_len: int,
        stride: int,
        num_clips: int,
        resize_hw: tuple[int, int],
        crop: int,
        backend: str,
        frame_cache: str | None = None,
    ) -> None:
        super().__init__(records, backend, frame_cache)
        self.clip_len, self.stride, self.num_clips = clip_len, stride, num_clips
        self.resize_hw = (T.at_crop(resize_hw[0], crop), T.at_crop(resize_hw[1], crop))
        self.crop = crop

    def load(self, i: int) -> dict:
        rec = self.records[i]
        n = self.reader.num_frames(rec.path)
        starts = uniform_clip_starts(n, self.clip_len, self.stride, self.num_clips)
        idx = np.minimum(starts[:, None] + np.arange(self.clip_len) * self.stride, n - 1)
        views = T.test_view(read_clip(self.reader, rec.path, idx.reshape(-1)), self.resize_hw, self.crop)
        views = views.view(3, self.num_clips, self.clip_len, self.crop, self.crop).transpose(0, 1)
        return {"imgs": views.contiguous(), "label": rec.label}

    def __getitem__(self, i: int) -> dict:
        try:
            return {**self.load(i), "bad": -1}
        except Exception as e:
            log.warning("cannot decode %s, leaving it out: %s", self.records[i].path, e)
            shape = (self.num_clips, 3, self.clip_len, self.crop, self.crop)
            return {"imgs": torch.zeros(shape), "label": self.records[i].label, "bad": i}
