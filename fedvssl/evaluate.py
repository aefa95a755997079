"""Downstream evaluation of a backbone on UCF-101 and HMDB-51 (retrieval)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from fedvssl.annotations import VideoRecord
from fedvssl.dataset import ClipsDataset
from fedvssl.model import R3D18, load_backbone
from fedvssl.retrieval import extract_features, recall_at_k
from fedvssl.sources import downstream_splits
from fedvssl.ssl.base import REFERENCE_CROP

log = logging.getLogger(__name__)


def build_backbone(state: Mapping[str, np.ndarray] | None, seed: int) -> R3D18:
    """The standard-stride backbone, from a state or (``None``) the seeded random init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = R3D18(ctp_strides=False)
    if state is not None:
        load_backbone(backbone, {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return backbone


def _loader(records: list[VideoRecord], cfg: DictConfig) -> DataLoader:
    r = cfg.finetune.retrieval
    scale = cfg.input.crop_size / REFERENCE_CROP
    resize_hw = (round(r.resize_hw[0] * scale), round(r.resize_hw[1] * scale))
    ds = ClipsDataset(
        records, cfg.input.clip_len, r.stride, r.num_clips, resize_hw, cfg.input.crop_size, cfg.runtime.decode_backend
    )
    return DataLoader(ds, batch_size=int(r.batch_size), num_workers=int(cfg.runtime.eval_workers))


def retrieval(cfg: DictConfig, backbones: Mapping[str, R3D18]) -> dict[str, dict]:
    """R@k per downstream dataset for each named backbone; clips are decoded once per backbone."""
    results: dict[str, dict] = {}
    ks = list(cfg.finetune.retrieval.ks)
    for name in cfg.finetune.datasets:
        train, test = downstream_splits(cfg, name)
        entry: dict = {"queries": len(test), "gallery": len(train)}
        for tag, backbone in backbones.items():
            start = time.perf_counter()
            g, gl = extract_features(backbone, _loader(train, cfg), progress=cfg.runtime.progress)
            q, ql = extract_features(backbone, _loader(test, cfg), progress=cfg.runtime.progress)
            scores = {"retrieval": recall_at_k(q, ql, g, gl, ks), "time_s": round(time.perf_counter() - start, 2)}
            if tag == "pretrained":
                entry.update(scores)
            else:
                entry[tag] = scores
            log.info("%s %s: %s", name, tag, scores["retrieval"])
        results[name] = entry
    return results
