"""From the dataset's sources to screened video lists (pretraining and downstream)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvssl.data.annotations import VideoRecord
from fedvssl.data.hmdb51 import read_hmdb51
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.data.screening import ScreeningSettings, skipped, usable
from fedvssl.data.ucf101 import read_ucf101
from fedvssl.errors import DataError

# The downstream datasets and their readers (finetune.datasets is a subset of these names).
DOWNSTREAM_READERS = {"ucf101": read_ucf101, "hmdb51": read_hmdb51}


@dataclass(frozen=True)
class PretrainSource:
    """``dataset.pretrain``: a Kinetics CSV and its video folder, or a UCF-101 root."""

    format: str  # kinetics_csv | ucf101
    csv: str | None = None
    videos: str | None = None
    root: str | None = None
    split: Any = "train"  # the CSV's split column, or the UCF-101 split number

    @property
    def videos_root(self) -> str:
        return str(self.videos if self.format == "kinetics_csv" else self.root)


@dataclass(frozen=True)
class DownstreamSet:
    """``dataset.<name>`` of a downstream dataset: where it is and which official split."""

    name: str
    root: str
    split: int


def pretrain_list(source: PretrainSource) -> tuple[list[VideoRecord], list[str]]:
    """Every listed pretraining video (resolved or not) and the class names."""
    if source.format == "kinetics_csv":
        return read_kinetics_csv(Path(source.csv), Path(source.videos), source.split)
    if source.format == "ucf101":
        train, _, classes = read_ucf101(Path(source.root), int(source.split))
        return train, classes
    raise DataError(f"dataset.pretrain.format={source.format!r}: expected kinetics_csv or ucf101")


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
