"""The published FedVSSL partitions: ``client_dist<k>.json``, one per client."""

from __future__ import annotations

import json
from pathlib import Path

from fedvssl.data.annotations import VideoRecord, index_videos
from fedvssl.errors import DataError


def client_file(folder: Path, client: int) -> Path:
    """The partition file of client ``client`` (1-based, as the published files)."""
    return Path(folder) / f"client_dist{client}.json"


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
