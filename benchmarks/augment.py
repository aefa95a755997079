"""The demo's training augmentation per clip, against the same chain at an earlier commit.

Speed's :class:`~fedvssl.data.presets.TrainPreset` (resize, flip, crop, brightness,
contrast, hue/saturation, normalisation) runs inside the client actors, on the cores that
also train, so every millisecond a clip costs lengthens a round. This times the chain per
clip on real frames of the synthetic world (decoded once, before timing), with one thread
as a client actor has. With ``--against REV`` it also loads ``transforms.py`` and
``presets.py`` as they were at git revision ``REV`` and times both chains in one process,
interleaved clip by clip, so that a shared machine slows them alike; it first says whether
they give the same values, draw for draw, and if not, how far apart they are.

Usage: ``python -m benchmarks.augment [--against REV] [--clips 2000]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.train_throughput import method_for
from dataset_preparation.synthetic import ensure
from fedvssl.data.video import make_reader

ROOT = Path(__file__).resolve().parents[1]


def world_clips(n: int, clip_len: int) -> list[np.ndarray]:
    """``n`` clips of ``clip_len`` consecutive frames from the world's Kinetics videos, decoded once."""
    root = ROOT / "data" / "synthetic"
    ensure(root)
    reader = make_reader()
    paths = sorted(str(p) for p in (root / "kinetics400").rglob("*.mp4"))
    rng = np.random.default_rng(0)
    clips = []
    for i in range(n):
        path = paths[i % len(paths)]
        start = int(rng.integers(0, reader.num_frames(path) - clip_len + 1))
        clips.append(reader.get_frames(path, np.arange(start, start + clip_len)))
    return clips


def preset_at(rev: str, folder: Path):
    """``TrainPreset`` as it was at ``rev``, importing the ``transforms`` of the same revision."""
    for name in ("transforms", "presets"):
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:fedvssl/data/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        text = text.replace("from fedvssl.data import transforms as T", "import old_transforms as T")
        (folder / f"old_{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("old_presets", folder / "old_presets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TrainPreset


def compare_values(old_chain, new_chain, frames: list[np.ndarray]) -> None:
    """Whether two chains give the same values draw for draw, or how far apart (in grey levels) they are."""
    std_255 = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1) * 255.0
    worst, summed, differing, total = 0.0, 0.0, 0, 0
    for seed, clip in enumerate(frames):
        old = old_chain(clip, np.random.default_rng(seed))
        new = new_chain(clip, np.random.default_rng(seed))
        levels = ((new - old) * std_255).abs()  # the difference back in [0, 255] units
        worst = max(worst, levels.max().item())
        summed += levels.sum().item()
        differing += int((levels > 0).sum())
        total += levels.numel()
    if differing == 0:
        print(f"same values on {len(frames)} clips, draw for draw")
    else:
        print(
            f"other arithmetic: {differing / total:.1%} of the values differ, by {summed / total:.3f} grey"
            f" levels on average and at most {worst:.2f}, on {len(frames)} clips, draw for draw"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", help="git revision whose chain to time beside today's")
    p.add_argument("--clips", type=int, default=2000, help="clips timed per chain")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (a client actor has 1)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    method = method_for("speed", 8, 64)  # the demo's Speed at 8x64x64
    chains = {"today": method.augment}
    with tempfile.TemporaryDirectory() as tmp:
        if a.against:
            old = preset_at(a.against, Path(tmp))
            new = method.augment
            chains = {a.against: old(new.sizes, new.crop, new.flip_p, new.brightness, new.contrast, new.hue_saturation)}
            chains["today"] = new
        frames = world_clips(64, 8)
        if len(chains) == 2:
            compare_values(*chains.values(), frames)
        times: dict[str, list[float]] = {name: [] for name in chains}
        rngs = {name: np.random.default_rng(1) for name in chains}
        for i in range(a.clips):
            clip = frames[i % len(frames)]
            for name, chain in chains.items():
                start = time.perf_counter()
                chain(clip, rngs[name])
                times[name].append(time.perf_counter() - start)
    print(f"{'chain':<12} {'ms/clip (mean)':>15} {'median':>8}")
    for name, t in times.items():
        print(f"{name:<12} {1e3 * statistics.fmean(t):>15.3f} {1e3 * statistics.median(t):>8.3f}")
    if len(times) == 2:
        old_t, new_t = (statistics.fmean(t) for t in times.values())
        print(f"today / {a.against}: {new_t / old_t:.2f}")


if __name__ == "__main__":
    main()
