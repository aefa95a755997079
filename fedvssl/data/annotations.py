"""What every annotation reader shares: the video record, the file index, class-index files.

One module per official format sits beside this one (``kinetics``, ``ucf101``,
``hmdb51``, ``client_dist``); each returns :class:`VideoRecord` lists with resolved
file paths. Videos are
found by file stem anywhere under the dataset root, in any common container, so
class folders, flat folders and .mp4/.avi/.mkv/.webm all work. A malformed line
stops with ``<file>:<line>: ...``; a listed video that is not on disk is kept with
an empty path and reported by :mod:`fedvssl.data.screening`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fedvssl.core.errors import DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")


@dataclass(frozen=True)
class VideoRecord:
    path: str  # "" when the video is not on disk
    label: int  # 0-based; -1 when unlabelled
    name: str


def _priority(path: str) -> int:
    # Kinetics copies may hold a stem twice: a replacement file beats the original,
    # and a regular file beats a symlink to it.
    return 2 * ("replacement" in path) + (not os.path.islink(path))


@lru_cache(maxsize=16)
def index_videos(root: str) -> dict[str, str]:
    """Map each video's file stem to its path, wherever it sits under ``root``."""
    index: dict[str, str] = {}
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() not in VIDEO_EXTENSIONS or f.startswith("."):
                continue
            path = os.path.join(dirpath, f)
            if stem not in index or _priority(path) > _priority(index[stem]):
                index[stem] = path
    return index


def read_class_index(path: Path) -> list[str]:
    """``<id> <name>`` lines with ids 1..N in order (UCF-101, FedVSSL's Kinetics list)."""
    names: list[str] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read the class index ({e.strerror})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(len(names) + 1):
            raise DataError(f"{path}:{lineno}: expected '<id> <class>' with id {len(names) + 1}, got {line.strip()!r}")
        names.append(parts[1])
    if not names:
        raise DataError(f"{path}: the class index is empty")
    return names
