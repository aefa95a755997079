"""The pretraining videos of a run: which the run lists, which are usable, and each client's share.

One function per question, for every entry point that asks it: :func:`listed_pretraining` (the
frame cache builds these) and :func:`partition_pretraining` (before every run: screen the list,
write the client partitions). Both read ``partition.*`` as one :class:`PartitionSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedvssl.core.errors import DataError
from fedvssl.data import partitions as P
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.lists import PRETRAIN_FORMATS, PretrainSource, pretrain_list, published_list
from fedvssl.data.screening import ScreeningSettings, skipped, usable


@dataclass(frozen=True)
class PartitionSettings:
    """``partition.*``: how the pretraining list is split among the clients, and where the files are."""

    scheme: str
    num_clients: int
    dir: str
    seed: int = 7
    alpha: float = 0.5  # the Dirichlet scheme's concentration
    class_index: str | None = None  # the published scheme's classInd.txt


def listed_pretraining(source: PretrainSource, partition: PartitionSettings) -> list[VideoRecord]:
    """Every listed pretraining video (resolved or not): the published partitions' in client
    order, or the pretraining list's."""
    if partition.scheme == P.PUBLISHED:
        folder, index = Path(partition.dir), Path(partition.class_index)
        return published_list(folder, partition.num_clients, index, Path(source.videos))
    return pretrain_list(source)[0]


def partition_pretraining(
    source: PretrainSource, partition: PartitionSettings, checks: ScreeningSettings
) -> list[dict[str, str]]:
    """Screen the pretraining videos and write the client partitions (the published ones are
    already written); returns the unusable videos, as :func:`~fedvssl.data.screening.skipped` lists them."""
    if partition.scheme == P.PUBLISHED:
        unique = list({r.name: r for r in listed_pretraining(source, partition)}.values())
        _, bad = usable(unique, "pretraining", source.videos_root, checks)
        return skipped("pretraining", "train", bad)
    listed, classes = pretrain_list(source)
    good, bad = usable(listed, "pretraining", source.videos_root, checks)
    items = [(P.item_name(r.name), r.label + 1) for r in good]
    if PRETRAIN_FORMATS[source.format].sort_items:
        items.sort()
    try:
        clients, params = P.split(items, partition.scheme, partition.num_clients, partition.seed, partition.alpha)
    except ValueError as e:
        raise DataError(f"partition: {e} ({source.videos_root}: {len(items)} usable videos)") from None
    meta = {"scheme": partition.scheme, **params, "sha256": P.checksum(items)}
    P.write_partition(clients, [c.replace(" ", "_") for c in classes], Path(partition.dir), meta)
    return skipped("pretraining", "train", bad)
