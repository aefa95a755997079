"""From the dataset's sources to screened video lists (pretraining and downstream)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvssl.core.errors import DataError
from fedvssl.data.annotations import VideoRecord, read_class_index
from fedvssl.data.client_dist import client_file, read_partition
from fedvssl.data.hmdb51 import read_hmdb51
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.data.screening import ScreeningSettings, skipped, usable
from fedvssl.data.ucf101 import read_ucf101

# The downstream datasets and their readers (finetune.datasets is a subset of these names).
DOWNSTREAM_READERS = {"ucf101": read_ucf101, "hmdb51": read_hmdb51}


@dataclass(frozen=True)
class PretrainSource:
    """``dataset.pretrain``: a Kinetics CSV and its video folder, or a UCF-101 root."""

    format: str  # a key of PRETRAIN_FORMATS
    csv: str | None = None
    videos: str | None = None
    root: str | None = None
    split: Any = "train"  # the CSV's split column, or the UCF-101 split number

    @property
    def videos_root(self) -> str:
        return str(getattr(self, PRETRAIN_FORMATS[self.format].videos_key))


def _kinetics(source: PretrainSource) -> tuple[list[VideoRecord], list[str]]:
    return read_kinetics_csv(Path(source.csv), Path(source.videos), source.split)


def _ucf101(source: PretrainSource) -> tuple[list[VideoRecord], list[str]]:
    train, _, classes = read_ucf101(Path(source.root), int(source.split))
    return train, classes


@dataclass(frozen=True)
class PretrainFormat:
    """How one ``dataset.pretrain.format`` is read, and how its videos are split over clients."""

    read: Callable[[PretrainSource], tuple[list[VideoRecord], list[str]]]
    videos_key: str  # the PretrainSource field that holds the video folder
    # Sort the items by name before splitting, so that the split does not depend on the
    # list's row order (Kinetics' CSV, as the partition command); UCF-101 keeps trainlist
    # order, as the Flower baseline's split does.
    sort_items: bool


# Every pretraining list format, the one place that names them (config checks, setup, readers).
PRETRAIN_FORMATS = {
    "kinetics_csv": PretrainFormat(_kinetics, "videos", sort_items=True),
    "ucf101": PretrainFormat(_ucf101, "root", sort_items=False),
}


@dataclass(frozen=True)
class DownstreamSet:
    """``dataset.<name>`` of a downstream dataset: where it is and which official split."""

    name: str
    root: str
    split: int


def pretrain_list(source: PretrainSource) -> tuple[list[VideoRecord], list[str]]:
    """Every listed pretraining video (resolved or not) and the class names."""
    if source.format not in PRETRAIN_FORMATS:
        raise DataError(f"dataset.pretrain.format={source.format!r}: expected one of {', '.join(PRETRAIN_FORMATS)}")
    return PRETRAIN_FORMATS[source.format].read(source)


def published_list(partition_dir: Path, num_clients: int, class_index: Path, videos: Path) -> list[VideoRecord]:
    """Every record of the published partition files ``client_dist1..N.json`` (resolved or not), in client order."""
    classes = read_class_index(Path(class_index))
    records: list[VideoRecord] = []
    for k in range(1, num_clients + 1):
        records += read_partition(client_file(Path(partition_dir), k), Path(videos), classes)
    return records


def screen_downstream(
    ds: DownstreamSet, settings: ScreeningSettings
) -> tuple[list[VideoRecord], list[VideoRecord], list[str], list[dict[str, str]]]:
    """Screened (train, test) lists of a downstream dataset, its class names, and what was skipped."""
    train, test, classes = DOWNSTREAM_READERS[ds.name](Path(ds.root), ds.split)
    train, bad_train = usable(train, f"{ds.name} train", ds.root, settings)
    test, bad_test = usable(test, f"{ds.name} test", ds.root, settings)
    return train, test, classes, skipped(ds.name, "train", bad_train) + skipped(ds.name, "test", bad_test)


def downstream_splits(
    ds: DownstreamSet, settings: ScreeningSettings
) -> tuple[list[VideoRecord], list[VideoRecord], list[str]]:
    """Screened (train, test) lists of a downstream dataset, and its class names."""
    return screen_downstream(ds, settings)[:3]
