"""UCF-101: ``ucfTrainTestlist/`` (``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``)."""

from __future__ import annotations

import os
from pathlib import Path

from fedvssl.core.errors import DataError
from fedvssl.data.annotations import VideoRecord, index_videos, read_class_index


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
