"""Screening of video files before training: missing, empty, undecodable, too short.

A run probes each listed video once (the result is cached by path, size and mtime),
or, reading from a frame cache (``runtime.decode_backend=cache``), checks each video's
entry (not in the cache, stale, or undecodable when the cache was built); it
drops the unusable ones, reports them once with the first few paths, and stops
with one line naming the dataset root when more than ``max_bad_fraction`` of a
list, or all of it, is unusable. Anything a probe misses is still caught while
loading: see :class:`fedvssl.data.datasets.PretextDataset`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fedvssl.core.errors import DataError
from fedvssl.core.files import write_json
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.client_dist import OUTSIDE_ROOT, outside_root
from fedvssl.data.frame_cache import NOT_CACHED, STALE, entry_status, read_failures
from fedvssl.data.video import VideoReader, make_reader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScreeningSettings:
    """How lists are screened (``data.*``), and the clip length a video must reach."""

    min_frames: int
    decode_backend: str
    probe: bool  # decode the first and last frame of every video once (cached)
    probe_workers: int
    probe_cache: str  # folder of the probe caches
    max_bad_fraction: float
    frame_cache: str | None = None  # runtime.frame_cache: the folder read with decode_backend=cache


@dataclass(frozen=True)
class Problem:
    name: str
    path: str
    # missing | outside the dataset root | empty | undecodable | too short | not in / stale in the frame cache
    reason: str


def probe(reader: VideoReader, path: str) -> int:
    """The frame count, after decoding the first and the last frame (catches truncation)."""
    n = reader.num_frames(path)
    if n > 0:
        frames = reader.get_frames(path, [0, n - 1])
        if frames.ndim != 4 or frames.shape[0] != 2:
            raise ValueError("decoded batch has the wrong shape")
    return n


class ProbeCache:
    """path -> [size, mtime_ns, frames] (frames -1: undecodable), persisted as JSON."""

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self.data: dict[str, list[int]] = {}
        if file is not None and file.is_file():
            try:
                self.data = json.loads(file.read_text())
            except ValueError:
                self.data = {}

    def get(self, path: str, stat: os.stat_result) -> int | None:
        hit = self.data.get(path)
        return hit[2] if hit and hit[:2] == [stat.st_size, stat.st_mtime_ns] else None

    def put(self, path: str, stat: os.stat_result, frames: int) -> None:
        self.data[path] = [stat.st_size, stat.st_mtime_ns, frames]

    def save(self) -> None:
        if self.file is not None:
            write_json(self.file, self.data)


def screen(
    records: Sequence[VideoRecord],
    min_frames: int,
    backend: str = "auto",
    probe_files: bool = True,
    cache: ProbeCache | None = None,
    workers: int = 2,
    frame_cache: str | None = None,
) -> tuple[list[VideoRecord], list[Problem]]:
    """Split records into usable ones and problems, keeping the input order."""
    cache = cache or ProbeCache(None)
    reader = make_reader(backend, frame_cache)
    status: dict[int, str] = {}
    to_probe: list[tuple[int, str, os.stat_result]] = []
    to_look_up: list[tuple[int, str, os.stat_result]] = []
    for i, r in enumerate(records):
        if not r.path or not os.path.isfile(r.path):
            status[i] = OUTSIDE_ROOT if not r.path and outside_root(r.name) else "missing"
            continue
        st = os.stat(r.path)
        if st.st_size == 0:
            status[i] = "empty"
        elif backend == "cache":
            # Always looked up, never taken from the probe cache: an entry's header is the
            # probe (the build decoded every frame), and the entry can change without the video.
            to_look_up.append((i, r.path, st))
        elif probe_files:
            frames = cache.get(r.path, st)
            if frames is None:
                to_probe.append((i, r.path, st))
            else:
                status[i] = _verdict(frames, min_frames)

    def run(item: tuple[int, str, os.stat_result]) -> tuple[int, str, os.stat_result, int]:
        i, path, st = item
        try:
            return i, path, st, probe(reader, path)
        except Exception:  # any decoder failure means the file is unusable
            return i, path, st, -1

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, path, st, frames in pool.map(run, to_probe):
            cache.put(path, st, frames)
            status[i] = _verdict(frames, min_frames)
    if to_look_up:
        failures = read_failures(frame_cache)

        def look_up(item: tuple[int, str, os.stat_result]) -> tuple[int, tuple[str, int]]:
            return item[0], entry_status(frame_cache, item[1], item[2], failures)

        with ThreadPoolExecutor(max_workers=max(4, workers)) as pool:  # header reads: I/O bound
            for i, (reason, frames) in pool.map(look_up, to_look_up):
                status[i] = _verdict(frames, min_frames) if reason == "ok" else reason
    if to_probe:
        cache.save()
    good = [r for i, r in enumerate(records) if status.get(i, "ok") == "ok"]
    bad = [Problem(r.name, r.path, status[i]) for i, r in enumerate(records) if status.get(i, "ok") != "ok"]
    return good, bad


def _verdict(frames: int, min_frames: int) -> str:
    if frames < 0:
        return "undecodable"
    return "ok" if frames >= min_frames else "too short"


def enforce(what: str, root: str | Path, total: int, problems: Sequence[Problem], max_bad_fraction: float) -> None:
    """Report the problems once; stop if too many, or all, of ``total`` videos are unusable."""
    if not problems:
        return
    counts = Counter(p.reason for p in problems)
    summary = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    first = [p.path or p.name for p in problems[:3]]
    if len(problems) >= total or len(problems) > max_bad_fraction * total:
        # Entries a build would add: say how, rather than leave the reader to find the command.
        hint = (
            "; python -m fedvssl.cache with this run's overrides builds them"
            if {NOT_CACHED, STALE} & set(counts)
            else ""
        )
        raise DataError(
            f"{root}: {len(problems)} of {total} {what} videos are unusable ({summary}), "
            f"more than data.max_bad_fraction={max_bad_fraction}; first: {first}{hint}"
        )
    log.warning("%s: skipping %d of %d %s videos (%s); first: %s", root, len(problems), total, what, summary, first)


def usable(
    records: list[VideoRecord], what: str, root: str, settings: ScreeningSettings
) -> tuple[list[VideoRecord], list[Problem]]:
    """Screen ``records`` (listed under ``root``); stop if too many are unusable."""
    cache_file = Path(settings.probe_cache) / f"probe-{hashlib.sha1(str(root).encode()).hexdigest()[:16]}.json"
    good, bad = screen(
        records,
        min_frames=settings.min_frames,
        backend=settings.decode_backend,
        probe_files=settings.probe,
        cache=ProbeCache(cache_file),
        workers=settings.probe_workers,
        frame_cache=settings.frame_cache,
    )
    enforce(what, root, len(records), bad, settings.max_bad_fraction)
    return good, bad


def skipped(dataset: str, split: str, problems: list[Problem]) -> list[dict[str, str]]:
    """Entries of the run's list of unusable videos: every skipped video, where it was listed, and why."""
    return [{"dataset": dataset, "split": split, "name": p.name, "path": p.path, "reason": p.reason} for p in problems]
