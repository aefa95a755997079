"""Can the backbone learn Speed on the synthetic world at all? An in-memory loop, no codec.

The pipeline's probe (``benchmarks.pretext_probe``) decodes, augments and restarts
its optimiser every epoch, as a client does. This loop strips all of that away to
ask the bare question: rendered frames (downscaled by area to the crop's scale), one
random horizontal crop, Speed's seven strides, one SGD optimiser for all steps, no
augmentation. It prints the loss and accuracy every ``--every`` steps (chance: ln 7 =
1.95) and a leave-one-out nearest-neighbour R@1 over held-out videos of every class,
for the trained backbone and for its random initialisation.

Usage: ``python -m benchmarks.pretext_in_memory --steps 900 [--background-contrast 1]``.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dataset_preparation.synthetic import MOTIONS, WorldSpec, render_video
from fedvssl.config.checks import CONF_DIR
from fedvssl.data.presets import TrainPreset
from fedvssl.data.transforms import at_crop, normalize
from fedvssl.models.heads import ClsHead
from fedvssl.models.r3d import R3D18, BackboneSize
from fedvssl.ssl.speed import STRIDES


def render(spec: WorldSpec, per_class: int, seed: int, scale: float) -> tuple[list[torch.Tensor], np.ndarray]:
    rng = np.random.default_rng(seed)
    videos, labels = [], []
    for c, motion in enumerate(MOTIONS):
        for _ in range(per_class):
            frames = torch.from_numpy(render_video(motion, rng, spec)).permute(0, 3, 1, 2).float()
            videos.append(F.interpolate(frames, scale_factor=scale, mode="area"))
            labels.append(c)
    return videos, np.array(labels)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--every", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--clip-len", type=int, default=8)
    p.add_argument("--crop", type=int, default=48)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--per-class", type=int, default=8, help="training videos per class")
    p.add_argument("--background-contrast", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0, help="the head's dropout (Speed's config: 0.5)")
    p.add_argument(
        "--augment",
        choices=("none", "scale", "colour", "all"),
        default="none",
        help="Speed's own augmentations (ssl/speed.yaml): scale jitter, colour jitter or both",
    )
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    spec = WorldSpec(background_contrast=a.background_contrast)
    scale = a.crop / spec.height
    start = time.perf_counter()
    # With augmentations, training clips go through Speed's TrainPreset from full-size frames.
    train, _ = render(spec, a.per_class, 1000 + a.seed, 1.0 if a.augment != "none" else scale)
    test, test_labels = render(spec, 16, 2000 + a.seed, scale)
    print(f"{len(train)} training and {len(test)} held-out videos rendered in {time.perf_counter() - start:.0f} s")

    backbone = R3D18(size=BackboneSize(a.width, a.blocks))
    head = ClsHead(len(STRIDES), dropout=a.dropout, in_channels=backbone.out_channels)
    init = copy.deepcopy(backbone)
    params = [*backbone.parameters(), *head.parameters()]
    if a.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=a.lr, momentum=a.momentum, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=1e-4)
    rng = np.random.default_rng(a.seed)
    speed = OmegaConf.load(CONF_DIR + "/ssl/speed.yaml")
    # Short sides are given at the reference 112 crop, as in the method.
    ref = [at_crop(s, a.crop, minimum=a.crop) for s in speed.scales] if a.augment in ("scale", "all") else [a.crop]
    colour = a.augment in ("colour", "all")
    preset = TrainPreset(
        ref,
        a.crop,
        flip_p=0.0,
        brightness=tuple(speed.brightness) if colour else (0.0, 0.0),
        contrast=tuple(speed.contrast) if colour else (0.0, 0.0),
        hue_saturation=tuple(speed.hue_saturation) if colour else (0.0, 0.0, 0.0),
    )

    def sample() -> tuple[torch.Tensor, int]:
        video = train[rng.integers(len(train))]
        label = int(rng.integers(len(STRIDES)))
        step = abs(STRIDES[label])
        span = (a.clip_len - 1) * step + 1
        first = int(rng.integers(0, max(len(video) - span, 0) + 1))
        idx = np.minimum(first + np.arange(a.clip_len) * step, len(video) - 1)
        idx = idx[::-1].copy() if STRIDES[label] < 0 else idx
        if a.augment != "none":
            return preset(video[idx].permute(0, 2, 3, 1).byte().numpy(), rng), label
        x0 = int(rng.integers(0, video.shape[3] - a.crop + 1))
        return normalize(video[idx, :, : a.crop, x0 : x0 + a.crop]), label

    def nn_recall(model: R3D18) -> float:
        model.eval()
        with torch.no_grad():
            feats = []
            for video in test:
                t0, x0 = (len(video) - a.clip_len) // 2, (video.shape[3] - a.crop) // 2
                clip = normalize(video[t0 : t0 + a.clip_len, :, : a.crop, x0 : x0 + a.crop])
                feats.append(model(clip[None]).mean((2, 3, 4))[0])
        model.train()
        f = torch.stack(feats)
        f = F.normalize(f - f.mean(0), dim=1)
        sim = f @ f.T
        sim.fill_diagonal_(-2)
        return 100 * float((test_labels[sim.argmax(1).numpy()] == test_labels).mean())

    print(f"random init: NN R@1 {nn_recall(init):.1f} over {len(test)} held-out videos", flush=True)
    losses, hits, start = [], [], time.perf_counter()
    for step in range(1, a.steps + 1):
        clips, labels = zip(*[sample() for _ in range(a.batch)], strict=True)
        logits = head(backbone(torch.stack(clips)))
        target = torch.tensor(labels)
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 40)
        opt.step()
        losses.append(loss.item())
        hits.append((logits.argmax(1) == target).float().mean().item())
        if step % a.every == 0:
            print(
                f"step {step}: loss {np.mean(losses[-a.every :]):.3f} accuracy {np.mean(hits[-a.every :]):.3f} "
                f"NN R@1 {nn_recall(backbone):.1f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
