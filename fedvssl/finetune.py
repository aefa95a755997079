"""Supervised fine-tuning on UCF-101 / HMDB-51 and the 10-clip test (CtP's TSN protocol).

The backbone (standard strides) is initialised from the pretrained checkpoint, a new
TSN head (dropout 0.5, one linear layer) is trained with SGD, and each test video is
classified from the average of its clips' logits. ``linear_probe`` freezes the
backbone (BatchNorm included) and trains the head only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fedvssl import transforms as T
from fedvssl.annotations import VideoRecord
from fedvssl.dataset import ClipsDataset, VideoDataset, random_clip_indices
from fedvssl.model import R3D18, ClsHead, device_of, load_backbone, to_device
from fedvssl.ssl.base import REFERENCE_CROP, read_clip

log = logging.getLogger(__name__)


class TSNClassifier(nn.Module):
    """Backbone then ``cls_head.fc_cls``: the 122-entry layout of CtP's fine-tuning model."""

    def __init__(self, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.backbone = R3D18(ctp_strides=False)
        self.cls_head = ClsHead(num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_head(self.backbone(x))


class TrainClips(VideoDataset):
    """One random clip per video per epoch with the fine-tuning augmentations."""

    def __init__(self, records: Sequence[VideoRecord], cfg: DictConfig, seed: Sequence[int]) -> None:
        super().__init__(records, cfg.runtime.decode_backend)
        t = cfg.finetune.training
        self.clip_len, self.crop, self.stride = int(cfg.input.clip_len), int(cfg.input.crop_size), int(t.stride)
        scale = self.crop / REFERENCE_CROP
        self.sizes_hw = [(max(self.crop, round(h * scale)), max(self.crop, round(w * scale))) for w, h in t.scales_wh]
        self.flip_p = float(t.flip_p)
        self.brightness, self.contrast = tuple(t.brightness), tuple(t.contrast)
        self.hue_saturation = tuple(t.hue_saturation)
        self.seed = tuple(int(s) for s in seed)

    def load(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng((*self.seed, i))
        rec = self.records[i]
        n = self.reader.num_frames(rec.path)
        idx = random_clip_indices(n, self.clip_len, [self.stride], False, rng)
        clip = T.to_clip(read_clip(self.reader, rec.path, idx))
        clip = T.resize(clip, *self.sizes_hw[int(rng.integers(len(self.sizes_hw)))])
        clip = T.random_flip(clip, self.flip_p, rng)
        clip = T.random_crop(clip, self.crop, rng)  # before the per-pixel jitters: same result, less work
        clip = T.random_brightness(clip, *self.brightness, rng)
        clip = T.random_contrast(clip, *self.contrast, rng)
        clip = T.random_hue_saturation(clip, *self.hue_saturation, rng)
        return {"imgs": T.normalize(clip), "label": rec.label}


def build_classifier(state: Mapping[str, np.ndarray] | None, num_classes: int, dropout: float, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TSNClassifier(num_classes, dropout)
    if state is not None:
        load_backbone(model.backbone, {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model


def accuracies(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Per-video top-1, top-5 and mean-class accuracy, in percent."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit1 = top[:, 0] == labels
    per_class = [hit1[labels == c].float().mean().item() for c in range(num_classes) if (labels == c).any()]
    return {
        "top1": 100.0 * hit1.double().mean().item(),
        "top5": 100.0 * (top == labels[:, None]).any(1).double().mean().item(),
        "mean_class": 100.0 * float(np.mean(per_class)),
    }


@torch.inference_mode()
def video_logits(
    model: nn.Module, loader: DataLoader, progress: bool = False, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip logits averaged per video (undecodable videos left out)."""
    model.eval()
    out, labels = [], []
    for batch in tqdm(loader, desc="test", disable=not progress, leave=False):
        keep = torch.as_tensor(batch["bad"]) < 0
        views = batch["imgs"][keep]
        if len(views):
            b, c = views.shape[:2]
            out.append(model(views.flatten(0, 1).to(device)).view(b, c, -1).mean(1).float().cpu())
            labels.append(torch.as_tensor(batch["label"])[keep])
    return torch.cat(out), torch.cat(labels)


def finetune(
    cfg: DictConfig,
    train: Sequence[VideoRecord],
    test: Sequence[VideoRecord],
    num_classes: int,
    state: Mapping[str, np.ndarray] | None,
) -> dict[str, Any]:
    """Train the classifier for ``finetune.training.epochs`` and test it with uniform clips."""
    t, seed = cfg.finetune.training, int(cfg.seed)
    device = device_of(cfg.runtime.device)
    start = time.perf_counter()
    model = build_classifier(state, num_classes, float(t.dropout), seed).to(device)
    if t.linear_probe:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(t.milestones), gamma=0.1)
    torch.manual_seed(seed)
    losses = []
    for epoch in tqdm(range(int(t.epochs)), desc="fine-tune", disable=not cfg.runtime.progress):
        model.train()
        if t.linear_probe:
            model.backbone.eval()  # frozen means frozen BatchNorm statistics too
        loader = DataLoader(
            TrainClips(train, cfg, seed=(seed, epoch)),
            batch_size=int(t.batch_size),
            shuffle=True,
            num_workers=int(cfg.runtime.eval_workers),
            generator=torch.Generator().manual_seed(seed * 1000 + epoch),
        )
        total, seen = 0.0, 0
        for batch in loader:
            batch = to_device(batch, device)
            loss = F.cross_entropy(model(batch["imgs"]), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, float(t.grad_clip))
            opt.step()
            total, seen = total + loss.item() * len(batch["label"]), seen + len(batch["label"])
        sched.step()
        losses.append(total / max(seen, 1))
        log.info("fine-tune epoch %d: loss %.4f", epoch + 1, losses[-1])
    r = cfg.finetune.retrieval
    scale = cfg.input.crop_size / REFERENCE_CROP
    resize_hw = (round(r.resize_hw[0] * scale), round(r.resize_hw[1] * scale))
    clips = ClipsDataset(
        test,
        cfg.input.clip_len,
        int(t.stride),
        int(t.num_test_clips),
        resize_hw,
        cfg.input.crop_size,
        cfg.runtime.decode_backend,
    )
    loader = DataLoader(clips, batch_size=int(r.batch_size), num_workers=int(cfg.runtime.eval_workers))
    logits, labels = video_logits(model, loader, bool(cfg.runtime.progress), device)
    return {
        **accuracies(logits, labels, num_classes),
        "epochs": int(t.epochs),
        "train_loss": losses,
        "time_s": round(time.perf_counter() - start, 2),
    }
