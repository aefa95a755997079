"""Annotation readers and torch datasets over video files on disk.

Readers turn the official annotation files into :class:`VideoRecord` lists;
datasets turn records into clips. Nothing is extracted to frames beforehand.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fedvssl import transforms as T
from fedvssl.ssl.base import SSLMethod, read_clip
from fedvssl.video import VideoReader, make_reader

log = logging.getLogger(__name__)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")


class DataError(ValueError):
    """An annotation or dataset problem, reported as one line naming the file."""


@dataclass(frozen=True)
class VideoRecord:
    path: str
    label: int  # 0-based
    name: str


@lru_cache(maxsize=8)
def index_videos(root: str) -> dict[str, str]:
    """Map each video's file stem to its path, wherever it sits under ``root``."""
    index: dict[str, str] = {}
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in sorted(files):
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_EXTENSIONS and ".partial" not in stem:
                index.setdefault(stem, os.path.join(dirpath, f))
    return index


def _resolve(records: list[tuple[str, int, str]], what: str) -> list[VideoRecord]:
    """Keep the records whose file exists; report the missing ones once."""
    found = [VideoRecord(p, lab, name) for p, lab, name in records if p and os.path.isfile(p)]
    missing = [name for p, _, name in records if not p or not os.path.isfile(p)]
    if not found:
        raise DataError(f"{what}: none of the {len(records)} listed videos exists")
    if missing:
        log.warning("%s: %d of %d videos missing, skipped (first: %s)", what, len(missing), len(records), missing[:3])
    return found


def read_class_index(path: Path) -> list[str]:
    """``<id> <name>`` lines, ids 1..N in order."""
    names = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] != str(len(names) + 1):
            raise DataError(f"{path}:{lineno}: expected '<id> <class>' with id {len(names) + 1}, got {line!r}")
        names.append(parts[1])
    return names


def read_kinetics_csv(csv_path: Path, video_root: Path, split: str = "train") -> tuple[list[VideoRecord], list[str]]:
    """Official Kinetics CSV (label,youtube_id,time_start,time_end,split); classes sorted."""
    rows = []
    with open(csv_path, newline="") as f:
        for lineno, row in enumerate(csv.DictReader(f), 2):
            try:
                stem = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}"
                rows.append((row["label"], stem, row["split"]))
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{csv_path}:{lineno}: bad Kinetics row ({e})") from None
    classes = sorted({label for label, _, _ in rows})
    lookup = {c: i for i, c in enumerate(classes)}
    index = index_videos(str(video_root))
    recs = [
        (index.get(stem, ""), lookup[lab], f"{lab.replace(' ', '_')}/{stem}") for lab, stem, s in rows if s == split
    ]
    return _resolve(recs, f"{csv_path} [{split}]"), classes


def read_partition(json_path: Path, video_root: Path) -> list[VideoRecord]:
    """A FedVSSL ``client_dist<k>.json``: records ``{"name": "<class>/<stem>", "label": 1..N}``."""
    try:
        items = json.loads(Path(json_path).read_text())
        raw = [(str(it["name"]), int(it["label"]) - 1) for it in items]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{json_path}: not a partition file ({e})") from None
    index = index_videos(str(video_root))
    return _resolve([(index.get(name.split("/")[-1], ""), lab, name) for name, lab in raw], str(json_path))


def read_ucf101(root: Path, split: int = 1) -> tuple[list[VideoRecord], list[VideoRecord], list[str]]:
    """UCF-101 from ``ucfTrainTestlist/``; the class is taken from each entry's folder."""
    root = Path(root)
    lists = root / "ucfTrainTestlist"
    classes = read_class_index(lists / "classInd.txt")
    lookup = {c: i for i, c in enumerate(classes)}
    video_dir = root / "UCF-101" if (root / "UCF-101").is_dir() else root

    def read(name: str) -> list[VideoRecord]:
        path = lists / f"{name}{split:02d}.txt"
        recs = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            entry = line.split()[0]
            cls = entry.split("/")[0]
            if cls not in lookup:
                raise DataError(f"{path}:{lineno}: class {cls!r} is not in {lists / 'classInd.txt'}")
            recs.append((str(video_dir / entry), lookup[cls], entry))
        if not recs:
            raise DataError(f"{path}: the split is empty")
        return _resolve(recs, str(path))

    return read("trainlist"), read("testlist"), classes


def read_hmdb51(root: Path, split: int = 1) -> tuple[list[VideoRecord], list[VideoRecord], list[str]]:
    """HMDB-51: ``<class>_test_split<N>.txt`` lines ``<video> <t>``, 1 = train, 2 = test."""
    root = Path(root)
    split_dir = root / "testTrainMulti_7030_splits"
    files = sorted(split_dir.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DataError(f"{split_dir}: no *_test_split{split}.txt files")
    classes = [f.name[: -len(f"_test_split{split}.txt")] for f in files]
    index = index_videos(str(root / "videos" if (root / "videos").is_dir() else root))
    train, test = [], []
    for label, path in enumerate(files):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path}:{lineno}: expected '<video> <0|1|2>', got {line!r}")
            rec = (index.get(os.path.splitext(parts[0])[0], ""), label, parts[0])
            {"1": train, "2": test}.get(parts[1], []).append(rec)
    return _resolve(train, f"{split_dir} [train]"), _resolve(test, f"{split_dir} [test]"), classes


class PretextDataset(Dataset):
    """One augmented pretext example per video per epoch.

    Randomness comes from ``(seed, round, client, index)``, so a client draws new
    clips and augmentations every round, yet every run with the same seed repeats.
    """

    def __init__(self, records: list[VideoRecord], method: SSLMethod, backend: str, seed: tuple[int, ...]) -> None:
        self.records = records
        self.method = method
        self.backend = backend
        self.seed = tuple(int(s) for s in seed)
        self._reader: VideoReader | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        self._reader = self._reader or make_reader(self.backend)
        rng = np.random.default_rng((*self.seed, i))
        path = self.records[i].path
        return self.method.sample(self._reader, path, self._reader.num_frames(path), rng)


def uniform_clip_starts(num_frames: int, clip_len: int, stride: int, num_clips: int) -> np.ndarray:
    """CtP's UniformFrameSampler offsets (base = clip_len * stride, as in the reference)."""
    delta = num_frames - clip_len * stride + 1
    if delta <= 0:
        return np.zeros(num_clips, dtype=np.int64)
    tick = delta / num_clips
    return np.array([int(tick / 2.0 + tick * k) for k in range(num_clips)], dtype=np.int64)


class ClipsDataset(Dataset):
    """``num_clips`` uniformly spread test views per video: [clips, 3, T, H, W] and the label."""

    def __init__(
        self,
        records: list[VideoRecord],
        clip_len: int,
        stride: int,
        num_clips: int,
        resize_hw: tuple[int, int],
        crop: int,
        backend: str,
    ) -> None:
        self.records = records
        self.clip_len, self.stride, self.num_clips = clip_len, stride, num_clips
        self.resize_hw, self.crop, self.backend = tuple(resize_hw), crop, backend
        self._reader: VideoReader | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self._reader = self._reader or make_reader(self.backend)
        rec = self.records[i]
        n = self._reader.num_frames(rec.path)
        starts = uniform_clip_starts(n, self.clip_len, self.stride, self.num_clips)
        idx = np.minimum(starts[:, None] + np.arange(self.clip_len) * self.stride, n - 1)
        views = T.test_view(read_clip(self._reader, rec.path, idx.reshape(-1)), self.resize_hw, self.crop)
        views = views.view(3, self.num_clips, self.clip_len, self.crop, self.crop).transpose(0, 1)
        return views.contiguous(), rec.label
