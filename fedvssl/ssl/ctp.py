"""Catch-the-Patch (CtP): track synthetic patches pasted onto the clip.

Three patches, cut from a random frame of the clip itself, move along random
trajectories (key frames, random interpolation modes, size changes), with
rectangle / ellipse / rhombus alpha masks, soft edges, per-frame opacity and 80 %
visibility. The model sees the clip and the first-frame box of each patch and
predicts every frame's box as normalised deltas to that box.

Patch synthesis is vectorised over frames and pixels (one ``grid_sample`` per
patch); Python loops only run over the 3 patches and the trajectory segments.
Where a detail cannot be reproduced exactly with tensor ops (the base mask is
evaluated on each frame's own pixel grid instead of being drawn at the source
size and resized), the difference is sub-pixel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from fedvssl.data import transforms as T
from fedvssl.data.samplers import random_clip_indices, read_clip
from fedvssl.data.transforms import at_crop, crop_scale
from fedvssl.data.video import VideoReader
from fedvssl.ssl.base import PretextModel, SSLMethod
from fedvssl.ssl.motion import interpolate, sample_key_frames

TARGET_STDS = (0.8, 0.8, 0.04, 0.04)
SHAPES = ("rectangle", "ellipse", "rhombus")
SHAPE_PROBS = (0.5, 0.35, 0.15)


class CtPHead(nn.Module):
    """Temporal conv (collapses layer4's 2 time steps), RoIAlign 5x5, 2-layer MLP -> T x 4 deltas."""

    def __init__(self, clip_len: int, channels: int = 512, spatial_scale: float = 1 / 8) -> None:
        super().__init__()
        self.clip_len = clip_len
        self.spatial_scale = spatial_scale
        self.temporal_conv = nn.Conv3d(channels, channels, (2, 1, 1))
        self.fc1 = nn.Linear(channels * 5 * 5, channels)
        self.pred_head = nn.Linear(channels, clip_len * 4)
        nn.init.kaiming_normal_(self.temporal_conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.temporal_conv.bias)
        for fc in (self.fc1, self.pred_head):
            nn.init.normal_(fc.weight, 0.0, 0.001)
            nn.init.zeros_(fc.bias)

    def forward(self, feat: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """``feat`` [B,512,2,h,w]; ``rois`` [B,P,4] first-frame boxes -> [B,P,T,4]."""
        b, p = rois.shape[:2]
        x = F.relu(self.temporal_conv(feat)).squeeze(2)
        idx = torch.arange(b, device=rois.device, dtype=rois.dtype).repeat_interleave(p)[:, None]
        boxes = torch.cat([idx, rois.reshape(-1, 4)], dim=1)
        r = roi_align(x, boxes, output_size=5, spatial_scale=self.spatial_scale, sampling_ratio=2, aligned=True)
        return self.pred_head(F.relu(self.fc1(r.flatten(1)))).view(b, p, self.clip_len, 4)


def box_deltas(rois: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Normalised (dcx, dcy, dlogw, dlogh) of per-frame ``boxes`` [..,T,4] against ``rois`` [..,4]."""
    rs = (rois[..., 2:] - rois[..., :2]).clamp(min=1)
    rc = (rois[..., 2:] + rois[..., :2]) / 2
    bs = (boxes[..., 2:] - boxes[..., :2]).clamp(min=1)
    bc = (boxes[..., 2:] + boxes[..., :2]) / 2
    delta = torch.cat([bc - rc.unsqueeze(-2), bs.log() - rs.log().unsqueeze(-2)], dim=-1)
    return delta / delta.new_tensor(TARGET_STDS)


def decode_deltas(rois: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`box_deltas`: boxes [..,T,4] from normalised deltas."""
    d = deltas * deltas.new_tensor(TARGET_STDS)
    rs = (rois[..., 2:] - rois[..., :2]).clamp(min=1).unsqueeze(-2)
    rc = ((rois[..., 2:] + rois[..., :2]) / 2).unsqueeze(-2)
    c, s = rc + d[..., :2], rs * d[..., 2:].exp()
    return torch.cat([c - s / 2, c + s / 2], dim=-1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of matching boxes."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1) + (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area - inter).clamp(min=1e-6)


def walk(start: np.ndarray, shifts: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Positions at the key frames: each shift is applied, then clipped to [low, high].

    As CtP's ``rectangle_movement``, the clip happens at every key frame, so a patch
    pushed against an edge moves back from the edge, not from beyond it.
    """
    path = [start]
    for shift in shifts:
        path.append(np.clip(path[-1] + shift, low, high))
    return np.stack(path)


class PatchTrajectories:
    """Steps A-C of CtP's PatchMask: initial boxes, then location and size trajectories."""

    def __init__(self, scales, ratios, scale_jitter, num_patches, loc_velocity, size_velocity, key_frame_probs):
        self.anchors = [(s * math.sqrt(r), s / math.sqrt(r)) for s in scales for r in ratios]
        self.scale_jitter, self.num_patches = scale_jitter, num_patches
        self.loc_velocity, self.size_velocity = loc_velocity, size_velocity
        self.key_frame_probs = key_frame_probs

    def initial_boxes(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        picks = rng.integers(len(self.anchors), size=self.num_patches)
        wh = np.array([self.anchors[i] for i in picks]) * np.exp(
            rng.uniform(-1, 1, (self.num_patches, 2)) * self.scale_jitter
        )
        bw, bh = np.clip(wh[:, 0], 1, w - 1), np.clip(wh[:, 1], 1, h - 1)
        x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        return np.stack([x1, y1, x1 + bw, y1 + bh], axis=1)

    def __call__(self, num_frames: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        """Integer boxes [P, T, 4] (x1, y1, x2, y2) inside the frame."""
        boxes = self.initial_boxes(h, w, rng)
        size0 = boxes[:, 2:] - boxes[:, :2]
        # Location: cumulative random shifts at key frames, kept inside the frame.
        keys = sample_key_frames(num_frames, self.key_frame_probs, rng)
        gaps = np.diff(keys)[:, None, None]
        shifts = rng.uniform(-1, 1, (len(gaps), self.num_patches, 2)) * self.loc_velocity * gaps
        centres = walk((boxes[:, :2] + boxes[:, 2:]) / 2, shifts, size0 / 2, np.array([w, h]) - size0 / 2)
        centres = interpolate(keys, centres, num_frames, rng)
        # Size: an independent key-frame set, cumulative log-scale changes.
        keys = sample_key_frames(num_frames, self.key_frame_probs, rng)
        gaps = np.diff(keys)[:, None, None]
        steps = rng.uniform(-1, 1, (len(gaps), self.num_patches, 2)) * self.size_velocity * gaps
        sizes = size0 * np.exp(np.concatenate([np.zeros((1, self.num_patches, 2)), steps.cumsum(0)]))
        sizes = interpolate(keys, sizes, num_frames, rng)
        out = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1)
        limit = np.array([w, h, w, h])
        out = np.round(np.clip(out, 0, limit))
        return np.clip(out, 0, limit).transpose(1, 0, 2)  # [P, T, 4]


def _alpha(shape: str, dx: torch.Tensor, dy: torch.Tensor, soft: float | None) -> torch.Tensor:
    """Base mask from normalised offsets to the box centre; ``soft`` is the inner edge of a ramp."""
    if shape == "rectangle":
        dist = torch.maximum(dx.abs(), dy.abs())
        mask = torch.ones_like(dist)
    else:
        dist = torch.hypot(dx, dy) if shape == "ellipse" else dx.abs() + dy.abs()
        mask = (dist < 0.5).float()
    if soft is not None:
        mask = mask * ((0.5 - dist) / (0.5 - soft)).clamp(0, 1)
    return mask


def paste_patches(
    clip: torch.Tensor, trajs: np.ndarray, rng: np.random.Generator, label_prob: float, key_frame_probs
) -> torch.Tensor:
    """Steps D-G: cut each patch from a random frame, mask it, paste it on every frame.

    ``clip`` [T,3,H,W] float in [0, 255]; patches are pasted in order of decreasing
    mean area and the result is truncated to integers after each, as on uint8 frames.
    """
    t, _, h, w = clip.shape
    source = clip.clone()
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    areas = ((trajs[..., 2] - trajs[..., 0]) * (trajs[..., 3] - trajs[..., 1])).mean(1)
    out = clip
    for p in np.argsort(-areas, kind="stable"):
        boxes = torch.as_tensor(trajs[p], dtype=torch.float32)  # [T,4]
        j = int(rng.integers(t))
        x1, y1, x2, y2 = (boxes[:, i].view(t, 1, 1) for i in range(4))
        bw, bh = (x2 - x1).clamp(min=1), (y2 - y1).clamp(min=1)
        sx1, sy1, sx2, sy2 = boxes[j].tolist()
        sw, sh = max(sx2 - sx1, 1.0), max(sy2 - sy1, 1.0)
        # Bilinear resize of the source crop to every frame's box (pixel-centre convention).
        u = sx1 + (xs - x1 + 0.5) * (sw / bw) - 0.5
        v = sy1 + (ys - y1 + 0.5) * (sh / bh) - 0.5
        u, v = torch.broadcast_tensors(u, v)
        grid = torch.stack([(u + 0.5) / w * 2 - 1, (v + 0.5) / h * 2 - 1], dim=-1)
        patch = F.grid_sample(
            source[j : j + 1].expand(t, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
        dx = (xs - x1 - (bw - 1) / 2) / bw
        dy = (ys - y1 - (bh - 1) / 2) / bh
        shape = SHAPES[int(rng.choice(3, p=SHAPE_PROBS))]
        soft = float(rng.uniform(0.30, 0.45)) if rng.random() < 0.5 else None
        keys = sample_key_frames(t, key_frame_probs, rng)
        opacity = interpolate(keys, rng.uniform(0.8, 1.0, len(keys)), t)
        visible = rng.uniform(0, 1, t)
        visible[[0, j]] = 0.0
        weight = torch.as_tensor(opacity * (visible <= label_prob), dtype=torch.float32).view(t, 1, 1)
        alpha = (_alpha(shape, dx, dy, soft) * inside * weight).unsqueeze(1)
        out = torch.floor(out * (1 - alpha) + patch * alpha)
    return out


def dynamic_jitter(
    clip: torch.Tensor, p: float, delta: float, probs, rng: np.random.Generator, gain: bool
) -> torch.Tensor:
    """DynamicBrightness (offsets) or DynamicContrast (gains), varying smoothly over time."""
    if rng.random() >= p:
        return clip
    t = clip.shape[0]
    keys = sample_key_frames(t, probs, rng)
    values = rng.uniform(-delta, delta, len(keys))
    per_frame = torch.as_tensor(interpolate(keys, np.exp(values) if gain else values, t, rng), dtype=clip.dtype)
    per_frame = per_frame.view(t, 1, 1, 1)
    return (clip * per_frame if gain else clip + per_frame).clamp_(0, 255)


class CtP(SSLMethod):
    head_name = "head"
    ctp_strides = True

    def __init__(
        self,
        clip_len: int,
        crop_size: int,
        optimizer: dict[str, float],
        strides: list[int],
        scales: list[int],
        flip_p: float,
        patch: dict[str, Any],
        hue_saturation: tuple[float, float, float],
        dynamic_brightness: tuple[float, float],
        dynamic_contrast: tuple[float, float],
        dynamic_key_frame_probs: tuple[float, float],
        backbone: dict[str, int] | None = None,
    ) -> None:
        super().__init__(clip_len, crop_size, optimizer, backbone)
        # The head's temporal conv needs exactly 2 time steps out of layer4: 9 <= T <= 16.
        if not 9 <= clip_len <= 16:
            raise ValueError(f"CtP needs input.clip_len in [9, 16] (the paper uses 16), got {clip_len}")
        if crop_size % 8:
            raise ValueError(f"CtP needs input.crop_size divisible by 8, got {crop_size}")
        self.strides = list(strides)
        self.scales = [at_crop(s, self.crop_size, minimum=self.crop_size) for s in scales]
        self.flip_p = flip_p
        scale = crop_scale(self.crop_size)  # patch geometry is given at the reference 112 crop
        self.trajectories = PatchTrajectories(
            scales=[s * scale for s in patch["scales"]],
            ratios=patch["ratios"],
            scale_jitter=patch["scale_jitter"],
            num_patches=patch["num_patches"],
            loc_velocity=patch["loc_velocity"] * scale,
            size_velocity=patch["size_velocity"],
            key_frame_probs=patch["key_frame_probs"],
        )
        self.label_prob = patch["label_prob"]
        self.patch_key_frame_probs = patch["key_frame_probs"]
        self.hue_saturation = tuple(hue_saturation)
        self.dynamic_brightness = tuple(dynamic_brightness)
        self.dynamic_contrast = tuple(dynamic_contrast)
        self.dynamic_key_frame_probs = tuple(dynamic_key_frame_probs)

    def build_head(self) -> nn.Module:
        return CtPHead(self.clip_len, self.feature_channels)

    def sample(self, reader: VideoReader, path: str, num_frames: int, rng: np.random.Generator) -> dict[str, Any]:
        idx = random_clip_indices(num_frames, self.clip_len, self.strides, True, rng)
        clip = T.to_clip(read_clip(reader, path, idx))
        clip = T.resize_short_side(clip, int(rng.choice(self.scales)))
        clip = T.random_crop(clip, self.crop_size, rng)
        clip = T.random_flip(clip, self.flip_p, rng)
        trajs = self.trajectories(self.clip_len, self.crop_size, self.crop_size, rng)
        clip = paste_patches(clip, trajs, rng, self.label_prob, self.patch_key_frame_probs)
        clip = T.random_hue_saturation(clip, *self.hue_saturation, rng)
        clip = dynamic_jitter(clip, *self.dynamic_brightness, self.dynamic_key_frame_probs, rng, gain=False)
        clip = dynamic_jitter(clip, *self.dynamic_contrast, self.dynamic_key_frame_probs, rng, gain=True)
        return {"imgs": T.normalize(clip), "trajs": torch.as_tensor(trajs, dtype=torch.float32)}

    def loss(self, model: PretextModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        trajs = batch["trajs"]  # [B,P,T,4]
        rois = trajs[:, :, 0]
        pred = model.pretext_head(model.backbone(batch["imgs"]), rois)
        target = box_deltas(rois, trajs)
        sl1 = F.smooth_l1_loss(pred, target, beta=1.0, reduction="none")
        count = max(1, sl1.shape[0] * sl1.shape[1] * sl1.shape[2])
        loss_ctr, loss_size = sl1[..., :2].sum() / count, sl1[..., 2:].sum() / count
        with torch.no_grad():
            iou = box_iou(decode_deltas(rois, pred.detach()), trajs).mean().item()
        return loss_ctr + loss_size, {"iou": iou, "loss_ctr": loss_ctr.item(), "loss_size": loss_size.item()}
