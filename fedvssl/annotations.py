"""Readers for the official annotation files of Kinetics-400, UCF-101 and HMDB-51,
and for the FedVSSL partition JSONs.

Each reader returns :class:`VideoRecord` lists with resolved file paths. Videos are
found by file stem anywhere under the dataset root, in any common container, so
class folders, flat folders and .mp4/.avi/.mkv/.webm all work. A malformed line
stops with ``<file>:<line>: ...``; a listed video that is not on disk is kept with
an empty path and reported by :mod:`fedvssl.health`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fedvssl.errors import DataError

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


def kinetics_stem(youtube_id: str, start: int, end: int) -> str:
    """``<youtube_id>_<start:06d>_<end:06d>``; ids are 11 characters and may hold '-' or '_'."""
    return f"{youtube_id}_{start:06d}_{end:06d}"


def read_kinetics_csv(
    csv_path: Path, video_root: Path, split: str | None = "train"
) -> tuple[list[VideoRecord], list[str]]:
    """Official Kinetics CSV: ``label,youtube_id,time_start,time_end,split`` (``is_cc`` and a
    missing ``label`` column, as in the original test list, are tolerated).

    Classes are the sorted labels; a record's name is ``<label_with_underscores>/<stem>``,
    the form used by the FedVSSL partitions.
    """
    rows: list[tuple[str, str, str]] = []
    if not Path(csv_path).is_file():
        raise DataError(f"{csv_path}: the annotation CSV does not exist")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        needed = {"youtube_id", "time_start", "time_end"} - set(reader.fieldnames or [])
        if needed:
            raise DataError(f"{csv_path}:1: missing column(s) {sorted(needed)}")
        for lineno, row in enumerate(reader, 2):
            try:
                yid = row["youtube_id"].strip()
                if len(yid) != 11:
                    raise ValueError(f"youtube_id {yid!r} is not 11 characters")
                stem = kinetics_stem(yid, int(row["time_start"]), int(row["time_end"]))
            except (TypeError, ValueError) as e:
                raise DataError(f"{csv_path}:{lineno}: bad Kinetics row ({e})") from None
            rows.append(((row.get("label") or "").strip().strip('"'), stem, (row.get("split") or "").strip()))
    classes = sorted({label for label, _, _ in rows if label})
    lookup = {c: i for i, c in enumerate(classes)}
    index = index_videos(str(video_root))
    records = [
        VideoRecord(index.get(stem, ""), lookup.get(label, -1), f"{label.replace(' ', '_') or 'unlabelled'}/{stem}")
        for label, stem, s in rows
        if split is None or s == split
    ]
    if not records:
        raise DataError(f"{csv_path}: no rows with split {split!r}")
    return records, classes


def read_partition(json_path: Path, video_root: Path, classes: list[str] | None = None) -> list[VideoRecord]:
    """A FedVSSL ``client_dist<k>.json``: a list of ``{"name": "<class_dir>/<stem>", "label": 1..N}``.

    With ``classes`` (the ``classInd.txt`` the labels index), each name's class folder
    must match its label.
    """
    try:
        items = json.loads(Path(json_path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{json_path}: not a partition file ({e})") from None
    if not isinstance(items, list):
        raise DataError(f"{json_path}: expected a JSON list of records")
    index = index_videos(str(video_root))
    records = []
    for i, item in enumerate(items):
        try:
            name, label = str(item["name"]), int(item["label"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{json_path}: record {i} needs 'name' and an integer 'label', got {item!r}") from None
        if classes is not None:
            if not 1 <= label <= len(classes):
                raise DataError(f"{json_path}: record {i} has label {label}, outside 1..{len(classes)}")
            if "/" in name and name.split("/")[0] != classes[label - 1]:
                raise DataError(f"{json_path}: record {i} ({name}) does not match class {classes[label - 1]!r}")
        records.append(VideoRecord(index.get(name.split("/")[-1], ""), label - 1, name))
    if not records:
        raise DataError(f"{json_path}: the partition is empty")
    return records


def read_ucf101(root: Path, split: int = 1) -> tuple[list[VideoRecord], list[VideoRecord], list[str]]:
    """UCF-101 from ``ucfTrainTestlist/``; the class comes from each entry's folder, not its id."""
    root = Path(root)
    if split not in (1, 2, 3):
        raise DataError(f"UCF-101 split must be 1, 2 or 3, got {split}")
    lists = root / "ucfTrainTestlist" if (root / "ucfTrainTestlist").is_dir() else root
    classes = read_class_index(lists / "classInd.txt")
    lookup = {c: i for i, c in enumerate(classes)}
    index = index_videos(str(root))

    def read(kind: str) -> list[VideoRecord]:
        path = lists / f"{kind}{split:02d}.txt"
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise DataError(f"{path}: cannot read the split file ({e.strerror})") from None
        records = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            entry = line.split()[0]
            cls = entry.split("/")[0] if "/" in entry else ""
            if cls not in lookup:
                raise DataError(f"{path}:{lineno}: class {cls!r} is not in {lists / 'classInd.txt'}")
            stem = os.path.splitext(entry.split("/")[-1])[0]
            records.append(VideoRecord(index.get(stem, ""), lookup[cls], entry))
        if not records:
            raise DataError(f"{path}: the split is empty")
        return records

    return read("trainlist"), read("testlist"), classes


def read_hmdb51(root: Path, split: int = 1) -> tuple[list[VideoRecord], list[VideoRecord], list[str]]:
    """HMDB-51: ``<class>_test_split<N>.txt`` lines ``<video> <t>`` (1 train, 2 test, 0 unused);
    classes in sorted order."""
    root = Path(root)
    if split not in (1, 2, 3):
        raise DataError(f"HMDB-51 split must be 1, 2 or 3, got {split}")
    split_dir = root / "testTrainMulti_7030_splits"
    suffix = f"_test_split{split}.txt"
    files = sorted(split_dir.glob(f"*{suffix}"))
    if not files:
        raise DataError(f"{split_dir}: no *{suffix} files")
    classes = [f.name[: -len(suffix)] for f in files]
    index = index_videos(str(root))
    train: list[VideoRecord] = []
    test: list[VideoRecord] = []
    for label, path in enumerate(files):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path}:{lineno}: expected '<video> <0|1|2>', got {line.strip()!r}")
            record = VideoRecord(index.get(os.path.splitext(parts[0])[0], ""), label, parts[0])
            {"1": train, "2": test}.get(parts[1], []).append(record)
    for kind, records in (("train", train), ("test", test)):
        if not records:
            raise DataError(f"{split_dir}: split {split} has no {kind} videos")
    return train, test, classes


# The downstream datasets and their readers (finetune.datasets is a subset of these names).
DOWNSTREAM_READERS = {"ucf101": read_ucf101, "hmdb51": read_hmdb51}
