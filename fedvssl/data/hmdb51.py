"""HMDB-51: ``testTrainMulti_7030_splits/<class>_test_split<N>.txt``."""

from __future__ import annotations

import os
from pathlib import Path

from fedvssl.core.errors import DataError
from fedvssl.data.annotations import VideoRecord, index_videos


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
