"""Downstream evaluation of a backbone on UCF-101 and HMDB-51: retrieval, and fine-tuning.

``python -m fedvssl.evaluate checkpoint=<path> finetune=ucf101`` evaluates any
checkpoint that ``fedvssl.checkpoints_io`` reads (ours, a published FedVSSL .npz, a
torchvision state_dict) with the same Hydra configs as the main job; without
``checkpoint`` it evaluates the seeded random-init backbone, the control. Add
``finetune.training.enabled=true`` for fine-tuning on top of retrieval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from fedvssl.annotations import VideoRecord
from fedvssl.config import CONF_DIR
from fedvssl.dataset import ClipsDataset
from fedvssl.errors import one_line_errors
from fedvssl.model import R3D18, device_of, load_backbone
from fedvssl.retrieval import extract_features, recall_at_k
from fedvssl.sources import downstream_splits
from fedvssl.ssl.base import REFERENCE_CROP

log = logging.getLogger(__name__)
State = Mapping[str, np.ndarray] | None


def build_backbone(state: State, seed: int) -> R3D18:
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


def evaluate_states(cfg: DictConfig, states: Mapping[str, State]) -> dict[str, dict]:
    """Per downstream dataset: retrieval (and fine-tuning if enabled) of each named backbone state.

    The first state's scores sit at the top of the dataset's entry; the others (such
    as ``random_init``) under their names.
    """
    from fedvssl.finetune import finetune

    results: dict[str, dict] = {}
    ks = list(cfg.finetune.retrieval.ks)
    for name in cfg.finetune.datasets:
        train, test, classes = downstream_splits(cfg, name)
        entry: dict = {"queries": len(test), "gallery": len(train), "classes": len(classes)}
        start = time.perf_counter()
        backbones = {tag: build_backbone(state, int(cfg.seed)) for tag, state in states.items()}
        device = str(device_of(cfg.runtime.device))
        g, gl = extract_features(backbones, _loader(train, cfg), device, progress=cfg.runtime.progress)
        q, ql = extract_features(backbones, _loader(test, cfg), device, progress=cfg.runtime.progress)
        seconds = round((time.perf_counter() - start) / len(states), 2)
        for i, (tag, state) in enumerate(states.items()):
            scores: dict = {"retrieval": recall_at_k(q[tag], ql, g[tag], gl, ks), "time_s": seconds}
            if cfg.finetune.training.enabled:
                scores["finetune"] = finetune(cfg, train, test, len(classes), state)
            if i == 0:
                entry.update(scores)
            else:
                entry[tag] = scores
            log.info("%s %s: %s", name, tag, {k: v for k, v in scores.items() if k != "time_s"})
        results[name] = entry
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from dataset_preparation.synthetic import WorldSpec, ensure
    from fedvssl.checkpoint import write_json, write_text
    from fedvssl.checkpoints_io import load_backbone_state
    from fedvssl.config import validate
    from fedvssl.results import results_markdown

    run_dir = Path(cfg.run.dir)
    validate(cfg)
    if cfg.dataset.get("generate", False):
        ensure(cfg.dataset.root, WorldSpec(**cfg.dataset.get("spec", {})))
    checkpoint = cfg.get("checkpoint")
    states = {"pretrained": load_backbone_state(checkpoint)} if checkpoint else {"random_init": None}
    start = time.perf_counter()
    results = evaluate_states(cfg, states)
    results["run"] = {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "overrides": list(HydraConfig.get().overrides.task),
        "wall_time_s": {"evaluation_s": round(time.perf_counter() - start, 2)},
    }
    write_json(run_dir / "results.json", results)
    text = results_markdown(results, list(cfg.finetune.retrieval.ks), next(iter(states)))
    write_text(run_dir / "results.md", text)
    print(text)


if __name__ == "__main__":
    main()
