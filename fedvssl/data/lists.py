"""From the ``dataset`` config to screened video lists (pretraining and downstream)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig

from fedvssl.data.annotations import VideoRecord
from fedvssl.data.hmdb51 import read_hmdb51
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.data.screening import ProbeCache, Problem, enforce, screen
from fedvssl.data.ucf101 import read_ucf101
from fedvssl.errors import DataError

# The downstream datasets and their readers (finetune.datasets is a subset of these names).
DOWNSTREAM_READERS = {"ucf101": read_ucf101, "hmdb51": read_hmdb51}


def usable(
    cfg: DictConfig, records: list[VideoRecord], what: str, root: str
) -> tuple[list[VideoRecord], list[Problem]]:
    """Screen ``records`` with the run's settings; stop if too many are unusable."""
    d = cfg.data
    cache_file = Path(d.probe_cache) / f"probe-{hashlib.sha1(str(root).encode()).hexdigest()[:16]}.json"
    good, bad = screen(
        records,
        min_frames=int(cfg.input.clip_len),
        backend=cfg.runtime.decode_backend,
        probe_files=bool(d.probe),
        cache=ProbeCache(cache_file),
        workers=int(d.probe_workers),
    )
    enforce(what, root, len(records), bad, float(d.max_bad_fraction))
    return good, bad


def pretrain_list(cfg: DictConfig) -> tuple[list[VideoRecord], list[str]]:
    """Every listed pretraining video (resolved or not) and the class names."""
    p = cfg.dataset.pretrain
    if p.format == "kinetics_csv":
        return read_kinetics_csv(Path(p.csv), Path(p.videos), p.get("split", "train"))
    if p.format == "ucf101":
        train, _, classes = read_ucf101(Path(p.root), int(p.split))
        return train, classes
    raise DataError(f"dataset.pretrain.format={p.format!r}: expected kinetics_csv or ucf101")


def pretrain_root(cfg: DictConfig) -> str:
    p = cfg.dataset.pretrain
    return str(p.videos if p.format == "kinetics_csv" else p.root)


def screen_downstream(
    cfg: DictConfig, name: str
) -> tuple[list[VideoRecord], list[VideoRecord], list[str], list[dict[str, str]]]:
    """Screened (train, test) lists of a downstream dataset, its class names, and what was skipped."""
    ds = cfg.dataset[name]
    train, test, classes = DOWNSTREAM_READERS[name](Path(ds.root), int(ds.split))
    train, bad_train = usable(cfg, train, f"{name} train", ds.root)
    test, bad_test = usable(cfg, test, f"{name} test", ds.root)
    return train, test, classes, skipped(name, "train", bad_train) + skipped(name, "test", bad_test)


def downstream_splits(cfg: DictConfig, name: str) -> tuple[list[VideoRecord], list[VideoRecord], list[str]]:
    """Screened (train, test) lists of a downstream dataset, and its class names."""
    return screen_downstream(cfg, name)[:3]


def skipped(dataset: str, split: str, problems: list[Problem]) -> list[dict[str, str]]:
    """Entries of the run's ``unusable_videos.json``: every skipped video, where it was listed, and why."""
    return [{"dataset": dataset, "split": split, "name": p.name, "path": p.path, "reason": p.reason} for p in problems]
