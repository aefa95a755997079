"""Kinetics-400/600/700: the official ``label,youtube_id,time_start,time_end,split`` CSV."""

from __future__ import annotations

import csv
from pathlib import Path

from fedvssl.core.errors import DataError
from fedvssl.data.annotations import VideoRecord, index_videos


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
