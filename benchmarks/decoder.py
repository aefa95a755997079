"""Does the decoder keep up? The training sampler's clips/s against the model's step rate.

In one run, side by side, at 16x112x112 (Speed's sampler and augmentation, batch 4):

- decord over Kinetics-shaped videos (340x256, 10 s at 25 fps, H.264 with one keyframe
  per video, as ffmpeg's default GOP of 250 gives) with N = 0, 1, 2 DataLoader workers;
- two pre-decoded clip caches at short side 144 (the largest of Speed's scales, so every
  drawn scale resizes down from it), with their disk cost: the frame cache backend
  (``runtime.decode_backend=cache``: JPEG frames at quality 90, one entry per video, built
  by ``fedvssl.data.frame_cache_build`` as ``python -m fedvssl.cache`` builds them), and a
  prototype of raw uint8 frames in a memory-mapped ``.npy`` per video;
- the augmentation alone on frames already in memory: what no decoder can beat;
- the model's training step (forward, backward, clipping, SGD) on this machine's device:
  with a GPU, as ``runtime=gpu`` runs it (bf16 autocast, channels-last, cuDNN autotuner).

Per-core rates are the clips/s divided by the cores the loader used (N workers, or the
main process for N = 0); the projection to a 16-core machine gives 15 of them to loader
workers (5 clients x 3 workers, conf/runtime/gpu.yaml). The target is 1,000 clips/s.

Usage: ``python -m benchmarks.decoder [--seconds 10] [--videos 6] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.data_loading import rate
from benchmarks.train_throughput import method_for, steps
from dataset_preparation.synthetic import MOTIONS, WorldSpec, render_video, write_video
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.datasets import PretextDataset
from fedvssl.data.frame_cache import Manifest, write_manifest
from fedvssl.data.frame_cache_build import build_entry, cached_frames
from fedvssl.data.video import DecordReader
from fedvssl.models.precision import Precision, prepare

CLIP_LEN, CROP, BATCH = 16, 112, 4
CACHE_SHORT_SIDE = 144
LOADER_CORES_16 = 15  # 5 clients x 3 workers on a 16-core machine, one core for the driver
TARGET = 1000.0
KINETICS_VIDEOS, KINETICS_FRAMES = 240_000, 300  # Kinetics-400's training set: ~10 s at 25-30 fps


def kinetics_like(root: Path, count: int, frames: int) -> list[Path]:
    """Textured 340x256 H.264 videos (a textured background gives a realistic bitrate)."""
    spec = WorldSpec(seed=1, num_frames=frames, height=256, width=340, background_contrast=1.0)
    rng = np.random.default_rng(spec.seed)
    paths = []
    for i in range(count):
        path = root / f"video{i:02d}-{frames}.mp4"
        if not path.is_file():
            write_video(path, render_video(MOTIONS[i % len(MOTIONS)], rng, spec), spec.fps)
        paths.append(path)
    return paths


def all_frames(path: str) -> np.ndarray:
    reader = DecordReader()
    return reader.get_frames(path, np.arange(reader.num_frames(path)))


class NpyCache:
    """A prototype: frames [n, h, w, 3] uint8 per video, memory-mapped: a read touches only the frames used."""

    name = "uint8 .npy cache (prototype)"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def file(self, path: str) -> Path:
        return self.folder / (Path(path).stem + ".npy")

    def build(self, path: str) -> int:
        frames = cached_frames(all_frames(path), CACHE_SHORT_SIDE)
        np.save(self.file(path), frames)
        return self.file(path).stat().st_size

    def num_frames(self, path: str) -> int:
        return int(np.load(self.file(path), mmap_mode="r").shape[0])

    def get_frames(self, path: str, indices) -> np.ndarray:
        frames = np.load(self.file(path), mmap_mode="r")
        return np.asarray(frames[np.clip(np.asarray(indices), 0, len(frames) - 1)])


class JpegCache:
    """The frame cache backend: built as ``python -m fedvssl.cache`` builds it, read by ``make_reader``."""

    name = "JPEG frame cache (decode_backend=cache)"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest = Manifest(short_side=CACHE_SHORT_SIDE, quality=90)
        write_manifest(folder, self.manifest)

    def build(self, path: str) -> int:
        built = build_entry(path, self.folder, self.manifest)
        if built.error:
            raise RuntimeError(f"{path}: {built.error}")
        return built.bytes


class InMemory(NpyCache):
    """Frames already decoded and resized, in RAM: the augmentation's own cost."""

    name = "in memory (augment only)"

    def __init__(self, frames: dict[str, np.ndarray]) -> None:
        self.frames = frames

    def num_frames(self, path: str) -> int:
        return len(self.frames[path])

    def get_frames(self, path: str, indices) -> np.ndarray:
        return self.frames[path][np.asarray(indices)]


def loader_rate(records: list[VideoRecord], method, source, workers: int, seconds: float) -> float:
    """Speed's training loader over ``source``: None (decord), the frame cache, or a prototype reader."""
    if isinstance(source, JpegCache):  # the real backend, as a run configures it
        ds = PretextDataset(records, method, "cache", seed=(0,), frame_cache=str(source.folder))
    else:
        ds = PretextDataset(records, method, "decord", seed=(0,))
        if source is not None:
            ds._reader = source  # the prototypes are readers of the same interface, not config backends
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    return rate(loader, 1, seconds)


def model_rate(method, device: str, seconds: float, batch_size: int = BATCH) -> float:
    on_gpu = device.startswith("cuda")
    precision = Precision(amp_dtype="bf16", channels_last=True, cudnn_benchmark=True) if on_gpu else Precision()
    model = prepare(method.build_model(0), precision, device)
    x, y = torch.randn(batch_size, 3, CLIP_LEN, CROP, CROP), torch.randint(0, 7, (batch_size,))
    batch = {"imgs": x, "label": y}
    return steps(model, method, iter(lambda: batch, None), device, precision, seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=250, help="per video (25 fps)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "fedvssl-bench-decoder"))
    a = p.parse_args()
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # as a loader worker runs (torch sets 1 thread in DataLoader workers)
    start = time.perf_counter()
    paths = kinetics_like(root, a.videos, a.frames)
    video_mb = np.mean([p.stat().st_size for p in paths]) / 1e6
    print(
        f"{a.videos} videos 340x256, {a.frames} frames, H.264 ({video_mb:.2f} MB each),"
        f" made in {time.perf_counter() - start:.0f} s"
    )
    # Many clips per video per pass, as dataset.pretrain.clips_per_video does: long passes.
    records = [VideoRecord(str(p), i % 7, p.stem) for i, p in enumerate(paths)] * 40
    method = method_for("speed", CLIP_LEN, CROP)
    cores = os.cpu_count() or 1

    rows = []  # (source, workers, clips/s, cores used)
    for workers in a.workers:
        if workers <= cores:
            rows.append(("decord", workers, loader_rate(records, method, None, workers, a.seconds), max(workers, 1)))
    disk = {}
    (root / "npy").mkdir(exist_ok=True)
    for cache in (NpyCache(root / "npy"), JpegCache(root / "frame-cache")):
        start = time.perf_counter()
        sizes = [cache.build(str(p)) for p in paths]
        build_s = (time.perf_counter() - start) / len(paths)
        disk[cache.name] = (np.mean(sizes) / a.frames, build_s)
        for workers in sorted({0, max(w for w in a.workers if w <= cores)}):
            rows.append((cache.name, workers, loader_rate(records, method, cache, workers, a.seconds), max(workers, 1)))
    frames = {str(p): cached_frames(all_frames(str(p)), CACHE_SHORT_SIDE) for p in paths}
    rows.append(("in memory (augment only)", 0, loader_rate(records, method, InMemory(frames), 0, a.seconds), 1))

    where = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} thread"
    if not a.device.startswith("cuda"):
        torch.set_num_threads(cores)
        where = f"CPU, {cores} threads"
    model = model_rate(method, a.device, a.seconds)
    print(f"\n{cores} cores here; model training step ({where}, batch {BATCH}): {model:.1f} clips/s")
    if a.device.startswith("cuda"):
        # Five packed clients keep five batches of 4 in flight: one batch of 20 bounds what they get.
        packed = model_rate(method, a.device, a.seconds, 5 * BATCH)
        print(f"  at batch {5 * BATCH} (5 packed clients' worth): {packed:.1f} clips/s")
    print(f"| source | workers | clips/s | per core | 15 cores (projected) | vs model step | vs {TARGET:.0f} clips/s |")
    print("|---|---|---|---|---|---|---|")
    for source, workers, r, used in rows:
        per_core = r / used
        projected = per_core * LOADER_CORES_16
        print(
            f"| {source} | {workers} | {r:.1f} | {per_core:.1f} | {projected:.0f} | {r / model:.2f}x "
            f"| {projected / TARGET:.2f}x |"
        )
    print(
        "\n| cache | bytes per frame | per 10 s video (250 frames) | Kinetics-400 (240k x 300 frames) | build s/video |"
    )
    print("|---|---|---|---|---|")
    for name, (per_frame, build_s) in disk.items():
        k400 = per_frame * KINETICS_FRAMES * KINETICS_VIDEOS / 1e12
        print(f"| {name} | {per_frame:,.0f} | {per_frame * 250 / 1e6:.1f} MB | {k400:.2f} TB | {build_s:.2f} |")
    print(f"(the H.264 videos: {video_mb:.2f} MB each)")


if __name__ == "__main__":
    main()
