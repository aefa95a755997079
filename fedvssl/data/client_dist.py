"""The published FedVSSL partitions: ``client_dist<k>.json``, one per client."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

from fedvssl.core.errors import DataError
from fedvssl.data.annotations import VideoRecord, index_videos

# The screening reason of a record whose name leads out of the dataset root (it is never looked up).
OUTSIDE_ROOT = "outside the dataset root"


def client_file(folder: Path, client: int) -> Path:
    """The partition file of client ``client`` (1-based, as the published files)."""
    return Path(folder) / f"client_dist{client}.json"


def outside_root(name: str) -> bool:
    """Whether a record's name climbs out of the folder it is relative to (``a/../../x``, ``/etc/passwd``)."""
    normal = posixpath.normpath(name.replace("\\", "/"))
    return normal.startswith("/") or normal == ".." or normal.startswith("../")


def read_partition(json_path: Path, video_root: Path, classes: list[str] | None = None) -> list[VideoRecord]:
    """A FedVSSL ``client_dist<k>.json``: a list of ``{"name": "<class_dir>/<stem>", "label": 1..N}``.

    With ``classes`` (the ``classInd.txt`` the labels index), each name's class folder
    must match its label. A name that climbs out of the dataset root is not looked up:
    its record has no path, and the screening lists it as :data:`OUTSIDE_ROOT`.
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
        path = "" if outside_root(name) else index.get(name.split("/")[-1], "")
        records.append(VideoRecord(path, label - 1, name))
    if not records:
        raise DataError(f"{json_path}: the partition is empty")
    return records


def partition_sizes(folder: Path, num_clients: int) -> dict[int, int]:
    """Records listed per partition id (0-based) in ``folder``'s partition files; unreadable files are left out.

    The server bounds each client's reported ``num-examples`` by its partition's size where
    it reads the same files as the clients.
    """
    sizes = {}
    for pid in range(num_clients):
        try:
            items = json.loads(client_file(folder, pid + 1).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(items, list):
            sizes[pid] = len(items)
    return sizes
