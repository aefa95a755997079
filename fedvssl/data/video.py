"""Video decoding behind one small interface: decord first, PyAV as the fallback, or a frame cache.

Every reader returns RGB uint8 frames [n, H, W, 3] for sorted or unsorted indices.
A reader is opened per call and dropped straight after, which keeps decord's memory
flat inside long-lived DataLoader workers (dmlc/decord#208). ``iter_frames`` decodes a
whole file in order, once, for building the frame cache (:mod:`fedvssl.data.frame_cache`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from fedvssl.data.frame_cache import FrameCacheReader

BACKENDS = ("auto", "decord", "pyav", "cache")


class VideoReader(Protocol):
    """What the datasets need from a decoder."""

    name: str

    def num_frames(self, path: str) -> int: ...

    def get_frames(self, path: str, indices: list[int] | np.ndarray) -> np.ndarray: ...


class DecordReader:
    """decord's ``VideoReader.get_batch``; one decoding thread per reader."""

    name = "decord"

    def __init__(self) -> None:
        import decord

        self._decord = decord

    def num_frames(self, path: str) -> int:
        return len(self._decord.VideoReader(path, num_threads=1))

    def get_frames(self, path: str, indices: list[int] | np.ndarray) -> np.ndarray:
        vr = self._decord.VideoReader(path, num_threads=1)
        idx = np.clip(np.asarray(indices, dtype=np.int64), 0, len(vr) - 1)
        frames = vr.get_batch(idx.tolist()).asnumpy()
        vr.seek(0)
        return frames

    def iter_frames(self, path: str, chunk: int) -> Iterator[np.ndarray]:
        """Every frame in order, ``chunk`` at a time, from one reader: it never seeks back."""
        vr = self._decord.VideoReader(path, num_threads=1)
        n = len(vr)
        for start in range(0, n, chunk):
            yield vr.get_batch(list(range(start, min(n, start + chunk)))).asnumpy()


class PyAVReader:
    """Sequential PyAV decode that keeps the requested indices."""

    name = "pyav"

    def __init__(self) -> None:
        import av

        self._av = av

    def num_frames(self, path: str) -> int:
        with self._av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            return sum(1 for _ in container.decode(stream))

    def get_frames(self, path: str, indices: list[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        wanted = set(idx.tolist())
        last = int(idx.max())
        decoded: dict[int, np.ndarray] = {}
        with self._av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    decoded[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
        if not decoded:
            raise ValueError(f"{path}: no decodable frames")
        # Indices past the real end repeat the last decoded frame, as decord's clamp does.
        tail = decoded[max(decoded)]
        return np.stack([decoded.get(i, tail) for i in idx.tolist()])

    def iter_frames(self, path: str, chunk: int) -> Iterator[np.ndarray]:
        """Every frame in order, ``chunk`` at a time."""
        with self._av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == chunk:
                    yield np.stack(frames)
                    frames = []
            if frames:
                yield np.stack(frames)


class FallbackReader:
    """decord, and PyAV for any file decord fails on (decord has known per-file bugs)."""

    name = "decord+pyav"

    def __init__(self, primary: VideoReader, fallback: VideoReader) -> None:
        self.primary, self.fallback = primary, fallback

    def num_frames(self, path: str) -> int:
        try:
            return self.primary.num_frames(path)
        except Exception:
            return self.fallback.num_frames(path)

    def get_frames(self, path: str, indices: list[int] | np.ndarray) -> np.ndarray:
        try:
            return self.primary.get_frames(path, indices)
        except Exception:
            return self.fallback.get_frames(path, indices)


class WholeVideoReader:
    """Another reader's frames, each video decoded whole once and kept in ``store`` while it fits.

    For data sets that list a video many times (the demo's 25 clips per video and round):
    every later clip is an index into memory instead of two container opens and a decode
    from the last keyframe. The frames are the same (the same decoder, every frame in order);
    a video that does not decode whole is read clip by clip as before.
    """

    any_order = True  # get_frames takes indices in any order, repeats included (samplers.read_clip)

    def __init__(self, inner: VideoReader, store: DecodedVideos) -> None:
        self.inner, self.store = inner, store
        self.name = f"{inner.name}, whole videos in memory"
        self._clip_by_clip: set[str] = set()

    def num_frames(self, path: str) -> int:
        key = self.store.key(self.inner, path)
        if key not in self.store.lengths:
            self.store.lengths[key] = self.inner.num_frames(path)
        return self.store.lengths[key]

    def get_frames(self, path: str, indices: list[int] | np.ndarray) -> np.ndarray:
        key = self.store.key(self.inner, path)
        frames = self.store.frames.get(key)
        if frames is None and path not in self._clip_by_clip:
            try:
                frames = self.inner.get_frames(path, np.arange(self.num_frames(path)))
            except Exception:
                self._clip_by_clip.add(path)  # its clips fail (or not) one by one, as without this reader
            else:
                self.store.keep(key, frames)
        if frames is None:
            return sorted_frames(self.inner, path, indices)
        return frames[np.clip(np.asarray(indices, dtype=np.int64), 0, len(frames) - 1)]


def sorted_frames(reader: VideoReader, path: str, indices: list[int] | np.ndarray) -> np.ndarray:
    """Decode each distinct frame once, in sorted order, then restore the requested order."""
    unique, inverse = np.unique(np.asarray(indices), return_inverse=True)
    return reader.get_frames(path, unique)[inverse]


BUDGET_ENV = "FEDVSSL_DECODED_VIDEOS_MB"


class DecodedVideos:
    """Whole decoded videos (and frame counts) by decoder, file and version, the oldest dropped past ``max_bytes``.

    One per process (:data:`DECODED`): a Ray actor that serves clients round after round decodes
    each of their videos once. A file that changes (size or modification time) is decoded anew.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self._max_bytes = max_bytes
        self.frames: dict[tuple, np.ndarray] = {}  # in insertion order: the oldest goes first
        self.lengths: dict[tuple, int] = {}

    @property
    def max_bytes(self) -> int:
        """The bound given, or FEDVSSL_DECODED_VIDEOS_MB (read when first needed), or 512 MiB."""
        if self._max_bytes is None:
            value = os.environ.get(BUDGET_ENV, "512")
            if not value.isdigit():
                raise ValueError(f"{BUDGET_ENV}={value!r}: expected a whole number of MiB (0: off)")
            self._max_bytes = int(value) * 2**20
        return self._max_bytes

    @staticmethod
    def key(reader: VideoReader, path: str) -> tuple:
        try:
            st = os.stat(path)
        except OSError:  # the reader decides what a missing file means (a frame cache may not need it)
            return reader.name, path
        return reader.name, path, st.st_size, st.st_mtime_ns

    def keep(self, key: tuple, frames: np.ndarray) -> None:
        if frames.nbytes > self.max_bytes:
            return
        while self.frames and sum(f.nbytes for f in self.frames.values()) + frames.nbytes > self.max_bytes:
            self.frames.pop(next(iter(self.frames)))
        self.frames[key] = frames


# This process's decoded videos: the demo client's 64 videos of 48 frames at 128x96 take 113 MB.
# FEDVSSL_DECODED_VIDEOS_MB bounds them (0: decode every clip from its file, as before 2026-12-06;
# benchmarks/demo_profile.py's "old" setting); it reaches the client actors through Ray.
DECODED = DecodedVideos()


def make_reader(backend: str = "auto", frame_cache: str | None = None) -> VideoReader:
    """``decord``, ``pyav``, ``auto`` (decord with a per-file PyAV fallback, or PyAV alone where
    decord does not import: no wheels for Python >= 3.12 or ARM), or ``cache``: the frame
    cache in folder ``frame_cache``, and nothing else."""
    if backend not in BACKENDS:
        raise ValueError(f"runtime.decode_backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "cache":
        if not frame_cache:
            raise ValueError("runtime.decode_backend=cache needs runtime.frame_cache=<folder>")
        return FrameCacheReader(frame_cache)
    if backend == "pyav":
        return PyAVReader()
    try:
        decord = DecordReader()
    except ImportError:
        if backend == "decord":
            raise
        return PyAVReader()
    return decord if backend == "decord" else FallbackReader(decord, PyAVReader())


def sequential_readers() -> list[DecordReader | PyAVReader]:
    """The decoders that read a whole file in order, in the order to try them (decord, then PyAV)."""
    try:
        return [DecordReader(), PyAVReader()]
    except ImportError:
        return [PyAVReader()]
