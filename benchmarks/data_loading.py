"""Data-loading throughput: training and 10-clip test samplers, decord and PyAV.

Every figure is measured side by side in one run and reported as a ratio, since
machines are shared and noisy:

- each loader against a plain sequential PyAV decode of the same frames (no
  sampling logic, no transforms): how much our path costs over raw decoding;
- the training loader with 2 workers against the model's own training speed
  (forward, backward and SGD step at the same clip size): the loader must deliver
  at least 3x what one CPU client consumes.

Usage: ``python -m benchmarks.data_loading [--input small|paper] [--seconds 20]``.
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

from dataset_preparation.synthetic import ensure
from fedvssl.data.datasets import ClipsDataset, PretextDataset
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.data.samplers import uniform_clip_starts
from fedvssl.data.ucf101 import read_ucf101
from fedvssl.data.video import PyAVReader
from fedvssl.ssl.speed import Speed

INPUTS = {"small": (8, 64), "paper": (16, 112)}


def speed_method(clip_len: int, crop: int) -> Speed:
    optimizer = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 40}
    return Speed(clip_len, crop, optimizer, [112, 128, 144], 0.5, (0.2, 32), (0.2, 0.2), (0.2, 12, 0.1), 0.5)


def rate(loader, clips_per_item: int, seconds: float) -> float:
    """Clips per second over whole passes until ``seconds`` have elapsed (first batch excluded)."""
    it, n = iter(loader), 0
    next(it)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += len(batch["imgs"]) * clips_per_item
    return n / (time.perf_counter() - start)


def sequential_rate(paths: list[str], index_sets: list[np.ndarray], seconds: float) -> float:
    """Plain sequential PyAV decode of exactly the requested frames, nothing else."""
    reader, n, start, i = PyAVReader(), 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        reader.get_frames(paths[i % len(paths)], index_sets[i % len(index_sets)])
        n, i = n + 1, i + 1
    return n / (time.perf_counter() - start)


def model_rate(method: Speed, clip_len: int, crop: int, seconds: float, threads: int) -> float:
    torch.set_num_threads(threads)
    model = method.build_model(0).train()
    opt = method.make_optimizer(model)
    x, y = torch.randn(4, 3, clip_len, crop, crop), torch.randint(0, 7, (4,))
    batch = {"imgs": x, "label": y}
    method.loss(model, batch)[0].backward()  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        loss, _ = method.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += 4
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", choices=sorted(INPUTS), default="small")
    p.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "fedvssl-bench-world"))
    a = p.parse_args()
    clip_len, crop = INPUTS[a.input]
    ensure(a.root)
    root = Path(a.root)
    train, _ = read_kinetics_csv(root / "kinetics400/annotations/train.csv", root / "kinetics400")
    ucf, _, _ = read_ucf101(root / "ucf101")
    method = speed_method(clip_len, crop)
    rng = np.random.default_rng(0)
    n_frames = 48
    train_idx = [method.indices(n_frames, int(rng.integers(7)), rng) for _ in range(64)]
    starts = uniform_clip_starts(n_frames, clip_len, 2, 10)
    test_idx = [np.unique(np.minimum(starts[:, None] + np.arange(clip_len) * 2, n_frames - 1))]

    print(f"input {clip_len}x{crop}x{crop}; {len(train)} training videos, {len(ucf)} test videos; torch threads 2")
    seq_train = sequential_rate([r.path for r in train], [np.unique(i) for i in train_idx], a.seconds)
    seq_test = 10 * sequential_rate([r.path for r in ucf], test_idx, a.seconds)
    rows = []
    for backend in ("decord", "pyav"):
        for workers in (0, 2):
            ds = PretextDataset(train, method, backend, seed=(0,))
            loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
            r = rate(loader, 1, a.seconds)
            rows.append(("train", backend, workers, r, r / seq_train))
            ds = ClipsDataset(ucf, clip_len, 2, 10, (128, 171), crop, backend)  # sizes at the 112 crop
            loader = DataLoader(ds, batch_size=2, num_workers=workers, persistent_workers=workers > 0)
            r = rate(loader, 10, a.seconds)
            rows.append(("test (10 clips)", backend, workers, r, r / seq_test))
    model = model_rate(method, clip_len, crop, a.seconds, threads=2)

    print(f"plain sequential PyAV decode, same frames: train {seq_train:.1f} clips/s, test {seq_test:.1f} clips/s")
    print("| sampler | backend | workers | clips/s | vs plain decode |")
    print("|---|---|---|---|---|")
    for name, backend, workers, r, ratio in rows:
        print(f"| {name} | {backend} | {workers} | {r:.1f} | {ratio:.2f}x |")
    best = max(r for name, backend, w, r, _ in rows if name == "train" and w == 2 and backend == "decord")
    print(f"model training (Speed, batch 4, 2 threads): {model:.1f} clips/s")
    print(f"training loader (decord, 2 workers) / model training: {best / model:.1f}x (target >= 3x)")


if __name__ == "__main__":
    main()
