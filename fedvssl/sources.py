"""From the ``dataset`` config to screened video lists (pretraining and downstream)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig

from fedvssl.annotations import DataError, VideoRecord, read_hmdb51, read_kinetics_csv, read_ucf101
from fedvssl.health import ProbeCache, Problem, enforce, screen

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


def downstream_splits(cfg: DictConfig, name: str) -> tuple[list[VideoRecord], list[VideoRecord], list[str]]:
    """Screened (train, test) lists of a downstream dataset, and its class names."""
    ds = cfg.dataset[name]
    train, test, classes = DOWNSTREAM_READERS[name](Path(ds.root), int(ds.split))
    train, _ = usable(cfg, train, f"{name} train", ds.root)
    test, _ = usable(cfg, test, f"{name} test", ds.root)
    return train, test, classes
