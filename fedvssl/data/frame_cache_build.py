"""Building a frame cache: each video decoded once, resized to the cache's short side, JPEG-encoded.

Videos are built in worker processes (``spawn``: a fresh interpreter, so no thread pool
of the parent is copied mid-use), one video per task, at most a few tasks ahead of the
workers. Fresh entries are skipped before any worker starts, so a second build resumes
where the first stopped. Videos no decoder can read are recorded in ``failures.json``
with their size and mtime, which the screening reports as ``undecodable``.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedvssl.data import transforms as T
from fedvssl.data.frame_cache import (
    CacheMiss,
    Manifest,
    check_entry,
    encode_entry,
    encode_jpeg,
    read_failures,
    source_key,
    write_entry,
    write_failures,
)
from fedvssl.data.video import sequential_readers

CHUNK = 32  # frames decoded, resized and encoded at a time: a 1080p chunk is 200 MB as uint8, 800 MB as float


def cached_frames(frames: np.ndarray, short_side: int) -> np.ndarray:
    """Frames at short side ``short_side`` with the training resize (bilinear), back to uint8.

    Frames whose short side is already at most ``short_side`` are kept as decoded: a cache
    never enlarges, so a small video reads from the cache exactly as from its decoder.
    """
    if min(frames.shape[1:3]) <= short_side:
        return frames
    clip = T.resize_short_side(T.to_clip(frames), short_side)
    return clip.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def is_fresh(folder: str | Path, path: str, manifest: Manifest) -> int | None:
    """The entry's size in bytes if it is fresh and built with ``manifest``'s settings, else None."""
    try:
        header = check_entry(folder, path)
    except (CacheMiss, OSError):
        return None
    if (header.short_side, header.quality) != (manifest.short_side, manifest.quality):
        return None
    return header.file_size


@dataclass(frozen=True)
class Built:
    """One video's build: its entry's size and frame count, or the error that stopped it."""

    path: str
    size: int = 0
    mtime_ns: int = 0
    bytes: int = 0
    frames: int = 0
    error: str = ""


def build_entry(path: str, folder: str | Path, manifest: Manifest) -> Built:
    """Decode ``path`` (decord, else PyAV), resize, encode, and write its entry atomically."""
    stat = os.stat(path)
    errors = []
    for reader in sequential_readers():
        try:
            images, shape = [], (0, 0)
            for chunk in reader.iter_frames(path, CHUNK):
                frames = cached_frames(chunk, manifest.short_side)
                shape = frames.shape[1:3]
                images += [encode_jpeg(f, manifest.quality) for f in frames]
            if not images:
                raise ValueError("no frames")
            break
        except Exception as e:  # any decoder failure: try the next decoder, then record it
            errors.append(f"{reader.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    else:
        return Built(path, stat.st_size, stat.st_mtime_ns, error="; ".join(errors))
    if os.stat(path).st_mtime_ns != stat.st_mtime_ns:  # changed while read: its frames may be of either version
        return Built(path, stat.st_size, stat.st_mtime_ns, error="changed while it was read")
    data = encode_entry(path, stat, images, int(shape[0]), int(shape[1]), manifest)
    write_entry(folder, path, data)
    return Built(path, stat.st_size, stat.st_mtime_ns, bytes=len(data), frames=len(images))


def _init_worker() -> None:
    # One process per core. Intra-op threads would only compete, and on a busy machine
    # they slow torchvision's JPEG encoder and the resize tenfold.
    torch.set_num_threads(1)


def size_text(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


@dataclass
class BuildSummary:
    listed: int = 0
    absent: int = 0  # missing or empty files: nothing to cache (the screening reports them)
    fresh: int = 0
    built: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> error
    bytes_written: int = 0
    bytes_total: int = 0  # of every fresh or built entry of the listed videos
    seconds: float = 0.0

    def line(self, folder: str | Path) -> str:
        failed = f", {len(self.failed)} failed (see {Path(folder) / 'failures.json'})" if self.failed else ""
        absent = f", {self.absent} missing or empty" if self.absent else ""
        return (
            f"frame cache {folder}: {self.listed} videos: {self.built} built, {self.fresh} already fresh"
            f"{failed}{absent}; {size_text(self.bytes_written)} written, {size_text(self.bytes_total)} for "
            f"these videos; {self.seconds:.1f} s"
        )


Progress = Callable[[str], None]


def _build_all(
    todo: list[str], folder: str | Path, manifest: Manifest, workers: int, record: Callable[[Built], None]
) -> None:
    """Build the entries of ``todo`` in ``workers`` processes (0: in this one), passing each result to ``record``."""
    if todo and workers == 0:  # in this process: small lists and tests (no process start-up)
        threads = torch.get_num_threads()
        _init_worker()
        try:
            for path in todo:
                record(build_entry(path, folder, manifest))
        finally:
            torch.set_num_threads(threads)
    elif todo:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            pending: set[Future] = set()
            for path in todo:
                pending.add(pool.submit(build_entry, path, folder, manifest))
                if len(pending) >= 4 * workers:  # a few tasks ahead of the workers, not 240,000
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        record(f.result())
            for f in pending:
                record(f.result())


def build_cache(
    paths: Sequence[str], folder: str | Path, manifest: Manifest, workers: int, progress: Progress = print
) -> BuildSummary:
    """Cache every video of ``paths`` that has no fresh entry in ``folder`` in ``workers`` processes
    (0: in this one, where a decoder that crashes takes the build with it); record the failures."""
    start = time.perf_counter()
    unique = list(dict.fromkeys(source_key(p) for p in paths))  # one entry per file, however often listed
    summary = BuildSummary(listed=len(unique))
    present = [p for p in unique if os.path.isfile(p) and os.path.getsize(p) > 0]
    summary.absent = len(unique) - len(present)
    with ThreadPoolExecutor(max_workers=16) as pool:  # header reads only: I/O bound
        sizes = list(pool.map(lambda p: is_fresh(folder, p, manifest), present))
    todo = [p for p, size in zip(present, sizes, strict=True) if size is None]
    summary.fresh = len(present) - len(todo)
    summary.bytes_total = sum(s for s in sizes if s is not None)
    progress(f"frame cache {folder}: {len(unique)} videos, {summary.fresh} fresh, {len(todo)} to build")
    failures = read_failures(folder)
    for p in set(present) - set(todo):
        failures.pop(p, None)
    begun = last = time.perf_counter()
    done = 0

    def record(b: Built) -> None:
        nonlocal last, done
        done += 1
        if b.error:
            summary.failed[b.path] = b.error
            failures[b.path] = {"size": b.size, "mtime_ns": b.mtime_ns, "error": b.error}
        else:
            summary.built += 1
            summary.bytes_written += b.bytes
            summary.bytes_total += b.bytes
            failures.pop(b.path, None)
        if time.perf_counter() - last > 10 or done == len(todo):
            last = time.perf_counter()
            rate = done / max(last - begun, 1e-9)
            eta = (len(todo) - done) / max(rate, 1e-9)
            progress(
                f"  {done}/{len(todo)} done ({len(summary.failed)} failed), "
                f"{size_text(summary.bytes_written)}, {rate:.1f} videos/s, {eta / 60:.0f} min left"
            )
            write_failures(folder, failures)  # an interrupted build keeps what it learnt

    _build_all(todo, folder, manifest, workers, record)
    write_failures(folder, failures)
    summary.seconds = time.perf_counter() - start
    return summary
