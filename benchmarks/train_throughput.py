"""Client training throughput per pretext task: the full step against compute alone.

For each method, in one run and side by side:

- full: a DataLoader over real synthetic videos (sampling, decoding, the method's
  augmentation, CtP's patch synthesis) feeding forward, backward, clipping and SGD;
- compute: the same steps on one pre-made batch already in memory.

The ratio full/compute says how much the data path costs the client (target >= 0.9).
On a GPU (``--device cuda``) the same script reports absolute clips/s, optionally
with bf16 autocast (``--amp``), channels-last 3D memory (``--channels-last``) and
``torch.compile`` (``--compile``): the client's own ``runtime.precision`` helpers.

``--precisions fp32,cl,bf16,bf16_cl`` instead times one training step per setting on one
batch in memory, the settings interleaved step by step so that a shared machine slows them
alike (median of ``--steps``), with the intra-op threads of one client actor (``--threads``).
The demo's step: ``--methods speed --clip-len 8 --crop 64 --batch-size 16 --precisions
fp32,cl,bf16,bf16_cl`` (the demo's backbone comes with the default ``input=small``).

Usage: ``python -m benchmarks.train_throughput [--methods ctp vcop speed] [--seconds 30]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from dataset_preparation.synthetic import ensure
from fedvssl.config.checks import build_method
from fedvssl.data.datasets import PretextDataset
from fedvssl.data.kinetics import read_kinetics_csv
from fedvssl.models.precision import Precision, autocast, prepare, to_device

ROOT = Path(__file__).resolve().parents[1]


def method_for(name: str, clip_len: int, crop: int):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [f"ssl={name}", f"input.clip_len={clip_len}", f"input.crop_size={crop}", "run.dir=."])
    return build_method(cfg)


def steps(model, method, batches, device, precision: Precision, seconds, warmup=2) -> float:
    """Samples per second of forward + backward + clip + SGD over ``batches`` (an iterator)."""
    opt = method.make_optimizer(model)
    n, start = 0, None
    for i, batch in enumerate(batches):
        if i == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start, n = time.perf_counter(), 0
        batch = to_device({k: v for k, v in batch.items() if k != "bad"}, precision, device)
        with autocast(precision, device):
            loss, _ = method.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), method.optimizer["grad_clip"])
        opt.step()
        n += len(batch["imgs"])
        if start is not None and time.perf_counter() - start > seconds:
            break
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


PRECISIONS = {
    "fp32": Precision(),
    "cl": Precision(channels_last=True),
    "bf16": Precision(amp_dtype="bf16"),
    "bf16_cl": Precision(amp_dtype="bf16", channels_last=True),
}


def precision_steps(method, names: list[str], batch_size: int, steps: int) -> dict[str, float]:
    """Median seconds of one SGD step per named precision, the settings interleaved step by step."""
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch_size, 3, method.clip_len, method.crop_size, method.crop_size, generator=gen)
    batch = {"imgs": imgs, "label": torch.randint(0, 7, (batch_size,), generator=gen)}
    models = {n: prepare(method.build_model(0), PRECISIONS[n], "cpu") for n in names}
    opts = {n: method.make_optimizer(m) for n, m in models.items()}
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(steps + 2):  # the first two: warm-up
        for n in names:
            p, start = PRECISIONS[n], time.perf_counter()
            with autocast(p, "cpu"):
                loss, _ = method.loss(models[n], to_device(batch, p, "cpu"))
            opts[n].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(models[n].parameters(), method.optimizer["grad_clip"])
            opts[n].step()
            times[n].append(time.perf_counter() - start)
    return {n: statistics.median(t[2:]) for n, t in times.items()}


def compare_precisions(a: argparse.Namespace) -> None:
    names = a.precisions.split(",")
    torch.set_num_threads(a.threads)
    print(f"CPU, {a.threads} thread(s), {a.clip_len}x{a.crop}x{a.crop}, batch {a.batch_size}, median of {a.steps}")
    print(f"| method | setting | ms per step | speed-up over {names[0]} |")
    print("|---|---|---|---|")
    for name in a.methods:
        per_step = precision_steps(method_for(name, a.clip_len, a.crop), names, a.batch_size, a.steps)
        for n, t in per_step.items():
            print(f"| {name} | {n} | {t * 1000:.0f} | {per_step[names[0]] / t:.2f} |")


def forever(loader):
    while True:
        yield from loader


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["ctp", "vcop", "speed"])
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seconds", type=float, default=30.0, help="per measurement")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (warm-up excluded)")
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "fedvssl-bench-world"))
    p.add_argument("--precisions", help=f"compare one step in these settings ({', '.join(PRECISIONS)}), CPU")
    p.add_argument("--steps", type=int, default=10, help="steps per setting with --precisions")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads with --precisions (a client actor's)")
    a = p.parse_args()
    if a.precisions:
        unknown = set(a.precisions.split(",")) - set(PRECISIONS)
        if unknown:
            p.error(f"unknown --precisions {sorted(unknown)}: choose from {', '.join(PRECISIONS)}")
        compare_precisions(a)
        return
    precision = Precision(
        amp_dtype="bf16" if a.amp else "none",
        channels_last=a.channels_last,
        cudnn_benchmark=a.device == "cuda",
        compile=a.compile,
    )
    ensure(a.root)
    root = Path(a.root)
    records, _ = read_kinetics_csv(root / "kinetics400/annotations/train.csv", root / "kinetics400")
    where = torch.cuda.get_device_name() if a.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"device {a.device} ({where}),"
        f" {a.clip_len}x{a.crop}x{a.crop}, batch {a.batch_size}, {a.workers} loader workers, amp {a.amp},"
        f" channels-last {a.channels_last}, compile {a.compile}"
    )
    print("| method | full step, samples/s | compute only, samples/s | full / compute |")
    print("|---|---|---|---|")
    for name in a.methods:
        method = method_for(name, a.clip_len, a.crop)
        ds = PretextDataset(records, method, "auto", seed=(0,))
        loader = DataLoader(
            ds,
            batch_size=a.batch_size,
            shuffle=True,
            num_workers=a.workers,
            persistent_workers=a.workers > 0,
            pin_memory=a.device == "cuda",
            drop_last=True,
        )
        model = prepare(method.build_model(0), precision, a.device)
        fixed = next(iter(loader))
        repeated = iter(lambda batch=fixed: batch, None)
        compute = steps(model, method, repeated, a.device, precision, a.seconds)
        full = steps(model, method, forever(loader), a.device, precision, a.seconds)
        print(f"| {name} | {full:.2f} | {compute:.2f} | {full / compute:.2f} |")
    print("(a VCOP sample is a tuple of 3 clips)")


if __name__ == "__main__":
    main()
