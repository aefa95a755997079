"""Supervised fine-tuning on UCF-101 / HMDB-51 and the 10-clip test (CtP's TSN protocol).

The backbone (standard strides) is initialised from the pretrained checkpoint, a new
TSN head (dropout 0.5, one linear layer) is trained with SGD, and each test video is
classified from the average of its clips' logits. ``linear_probe`` freezes the
backbone (BatchNorm included) and trains the head only.

One optimizer step takes ``batch_size`` clips (the reference's 32: 8 on each of 4 GPUs
with SyncBN, so BatchNorm also normalises over 32). ``accumulate`` > 1 splits each step
into that many forward passes of ``batch_size / accumulate`` clips and sums their
gradients: the step's gradient is the mean over the same 32 clips, but BatchNorm then
normalises over the clips of one pass only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fedvssl.config.settings import ClipInput, EvaluationSettings, FinetuneSettings
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.datasets import VideoDataset
from fedvssl.data.presets import TrainPreset
from fedvssl.data.samplers import random_clip_indices, read_clip
from fedvssl.downstream.views import view_loader
from fedvssl.models.heads import ClsHead
from fedvssl.models.precision import CPU, Compute
from fedvssl.models.r3d import PAPER_SIZE, R3D18, BackboneSize, load_backbone

log = logging.getLogger(__name__)


class TSNClassifier(nn.Module):
    """Backbone then ``cls_head.fc_cls``: the 122-entry layout of CtP's fine-tuning model."""

    def __init__(self, num_classes: int, dropout: float, size: BackboneSize = PAPER_SIZE) -> None:
        super().__init__()
        self.backbone = R3D18(ctp_strides=False, size=size)
        self.cls_head = ClsHead(num_classes, dropout, self.backbone.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_head(self.backbone(x))


class TrainClips(VideoDataset):
    """One random clip per video per epoch with the fine-tuning augmentations."""

    def __init__(
        self, records: Sequence[VideoRecord], clips: ClipInput, t: FinetuneSettings, seed: Sequence[int]
    ) -> None:
        super().__init__(records, clips.decode_backend, clips.frame_cache)
        self.clip_len, self.crop, self.stride = clips.clip_len, clips.crop_size, t.stride
        sizes_hw = [(h, w) for w, h in t.scales_wh]
        self.augment = TrainPreset.at_reference(
            sizes_hw, self.crop, t.flip_p, t.brightness, t.contrast, t.hue_saturation
        )
        self.seed = tuple(int(s) for s in seed)

    def load(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng((*self.seed, i))
        rec = self.records[i]
        n = self.reader.num_frames(rec.path)
        idx = random_clip_indices(n, self.clip_len, [self.stride], False, rng)
        return {"imgs": self.augment(read_clip(self.reader, rec.path, idx), rng), "label": rec.label}


def build_classifier(
    state: Mapping[str, np.ndarray] | None, num_classes: int, dropout: float, seed: int, size: BackboneSize
) -> TSNClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TSNClassifier(num_classes, dropout, size)
    if state is not None:
        load_backbone(model.backbone, state)
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
    model: nn.Module,
    loader: DataLoader,
    compute: Compute = CPU,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip logits averaged per video (undecodable videos left out), under ``compute``'s autocast."""
    model.eval()
    out, labels = [], []
    for batch in tqdm(loader, desc="test", disable=not progress, leave=False):
        keep = torch.as_tensor(batch["bad"]) < 0
        views = batch["imgs"][keep]
        if len(views):
            b, c = views.shape[:2]
            with compute.autocast():
                logits = model(compute.input(views.flatten(0, 1)))
            out.append(logits.float().reshape(b, c, -1).mean(1).cpu())
            labels.append(torch.as_tensor(batch["label"])[keep])
    return torch.cat(out), torch.cat(labels)


def trainable(model: TSNClassifier, linear_probe: bool) -> list[nn.Parameter]:
    """The parameters fine-tuning updates: all of them, or the head's alone for a linear probe."""
    if linear_probe:
        for param in model.backbone.parameters():
            param.requires_grad_(False)
    return [param for param in model.parameters() if param.requires_grad]


def optimizer_steps(loader: Iterable[dict], accumulate: int) -> Iterator[list[dict]]:
    """The loader's batches grouped ``accumulate`` at a time, one group per optimizer step (the last may be short)."""
    group: list[dict] = []
    for batch in loader:
        group.append(batch)
        if len(group) == accumulate:
            yield group
            group = []
    if group:
        yield group


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    t: FinetuneSettings,
    compute: Compute,
) -> float:
    """One epoch of SGD steps over ``t.batch_size`` clips each; returns the mean loss per clip."""
    params = [q for group in opt.param_groups for q in group["params"]]
    total, seen = 0.0, 0
    for group in optimizer_steps(loader, t.accumulate):
        step_clips = sum(len(b["label"]) for b in group)
        opt.zero_grad(set_to_none=True)
        for batch in group:
            batch = compute.batch(batch)
            with compute.autocast():
                loss = F.cross_entropy(model(batch["imgs"]), batch["label"], reduction="sum")
            # Each pass adds its share of the step's mean loss: the gradient is the mean over the step's clips.
            scaler.scale(loss / step_clips).backward()
            total, seen = total + loss.item(), seen + len(batch["label"])
        scaler.unscale_(opt)  # clip the true gradients (a no-op unless fp16)
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        scaler.step(opt)
        scaler.update()
    return total / max(seen, 1)


def train_classifier(
    model: TSNClassifier, train: Sequence[VideoRecord], s: EvaluationSettings, compute: Compute
) -> list[float]:
    """Fine-tune ``model`` on ``compute``, in place, for ``finetune.training.epochs``; each epoch's mean loss."""
    t, clips, seed = s.finetune, s.clips, s.seed
    params = trainable(model, t.linear_probe)
    opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=t.milestones, gamma=0.1)
    scaler = compute.grad_scaler()
    torch.manual_seed(seed)
    losses = []
    for epoch in tqdm(range(t.epochs), desc="fine-tune", disable=not clips.progress):
        model.train()
        if t.linear_probe:
            model.backbone.eval()  # frozen means frozen BatchNorm statistics too
        loader = DataLoader(
            TrainClips(train, clips, t, seed=(seed, epoch)),
            batch_size=t.batch_size // t.accumulate,
            shuffle=True,
            num_workers=clips.eval_workers,
            pin_memory=compute.pin_memory,
            generator=torch.Generator().manual_seed(seed * 1000 + epoch),
        )
        losses.append(train_epoch(model, loader, opt, scaler, t, compute))
        sched.step()
        log.info("fine-tune epoch %d: loss %.4f", epoch + 1, losses[-1])
    return losses


def finetune(
    s: EvaluationSettings,
    train: Sequence[VideoRecord],
    test: Sequence[VideoRecord],
    num_classes: int,
    state: Mapping[str, np.ndarray] | None,
) -> dict[str, Any]:
    """Train the classifier for ``finetune.training.epochs`` and test it with uniform clips."""
    t, clips, compute = s.finetune, s.clips, s.clips.compute
    start = time.perf_counter()
    model = compute.prepare(build_classifier(state, num_classes, t.dropout, s.seed, s.backbone))
    losses = train_classifier(model, train, s, compute)
    loader = view_loader(test, clips, t.stride, t.num_test_clips, s.retrieval.resize_hw, s.retrieval.batch_size)
    logits, labels = video_logits(model, loader, compute, clips.progress)
    return {
        **accuracies(logits, labels, num_classes),
        "epochs": t.epochs,
        "clips_per_step": t.batch_size,
        "accumulate": t.accumulate,
        "train_loss": losses,
        "time_s": round(time.perf_counter() - start, 2),
    }
