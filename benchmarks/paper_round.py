"""A federated round at the paper's input, end to end, the 540-round projection, and retrieval features.

- Retrieval features: clips/s of the eval-mode R3D-18 with the retrieval pooling at
  16x112x112, in fp32 and with the run's precision (bf16 autocast and channels-last
  on a GPU), batch ``--eval-batch``.
- One round: the real main job (Flower's simulation on Ray, the FedVSSL strategy,
  ``runtime=gpu`` packing on a GPU) with 5 clients, all 5 per round, at ``input=paper``
  on Kinetics-shaped synthetic videos (340x256), for 2 rounds; round 1 pays for Ray's
  start and the first model builds, so round 2 is the one measured. From ``history.json``:
  the round's wall time, the clips the 5 clients trained (videos x clips per video), and
  the clients' own time.
- Projection: a paper round trains 5 clients x about 2,300 clips (Kinetics-400 over 100
  clients, one local epoch); at the measured round's clips/s plus its fixed cost (the
  round's time not spent in the slowest client), 540 rounds take
  540 x (fixed + 5 x 2,300 / clips per s). Downstream evaluation is not included.

On a CPU (``--runtime cpu --input tiny``) the same script runs as a check of itself;
its figures then say nothing of a GPU.

Usage: ``python -m benchmarks.paper_round [--runtime gpu] [--ssl ctp] [--clips-per-video 40]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.jobs import ROOT, job_env, run_job
from dataset_preparation.synthetic import ensure
from fedvssl.downstream.retrieval import RETRIEVAL_POOL
from fedvssl.models.precision import Precision, autocast, prepare, to_device
from fedvssl.models.r3d import R3D18

PAPER_ROUNDS = 540
PAPER_CLIENTS_PER_ROUND = 5
PAPER_CLIPS_PER_CLIENT = 2300  # Kinetics-400's ~230,000 training videos over 100 clients, one clip each


def extraction_rate(device: str, precision: Precision, batch: int, seconds: float, clip_len: int, crop: int) -> float:
    """Clips/s of retrieval features (backbone + pooling) on random clips already on the device."""
    backbone = prepare(R3D18().eval(), precision, device)
    pool = torch.nn.AdaptiveAvgPool3d(RETRIEVAL_POOL)
    clips = to_device({"imgs": torch.randn(batch, 3, clip_len, crop, crop)}, precision, device)["imgs"]
    with torch.inference_mode(), autocast(precision, device):
        pool(backbone(clips)).flatten(1)  # warm-up: cuDNN's autotuner, lazy allocations
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, n = time.perf_counter(), 0
        while n == 0 or time.perf_counter() - start < seconds:
            pool(backbone(clips)).flatten(1).float().cpu()  # the copy back waits for the GPU
            n += batch
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime", default="gpu" if torch.cuda.is_available() else "cpu", choices=["gpu", "cpu"])
    p.add_argument("--input", default="paper", help="input config: paper (16x112x112), small or tiny")
    p.add_argument("--ssl", default="ctp", choices=["ctp", "vcop", "speed"])
    p.add_argument("--clips-per-video", type=int, default=40, help="clips each client draws per video per round")
    p.add_argument("--videos-per-class", type=int, default=4, help="8 classes: 32 videos over the 5 clients")
    p.add_argument("--frames", type=int, default=64, help="frames per synthetic video (340x256, 25 fps)")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=8.0, help="per extraction measurement")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedvssl-paper-round")
    p.add_argument(
        "--decode-backend", default="auto", choices=["auto", "cache"], help="cache: build the frame cache first"
    )
    p.add_argument("--prepare-only", action="store_true", help="only generate the videos (gpu.sh: in the background)")
    p.add_argument("overrides", nargs="*", help="more overrides for the main job, e.g. runtime.num_workers=2")
    a = p.parse_args(argv)

    world = a.work / "world"
    # Kinetics-shaped pretraining videos; the downstream sets (not evaluated here) one video per class.
    spec = {
        "kinetics_per_class": a.videos_per_class,
        "num_frames": a.frames,
        "height": 256,
        "width": 340,
        "ucf_groups": 1,
        "ucf_clips_per_group": 1,
        "ucf_test_groups": 1,
        "hmdb_per_class": 1,
        "hmdb_test_per_class": 1,
        "hmdb_unused_per_class": 0,
    }
    if a.prepare_only:
        start = time.perf_counter()
        ensure(world, spec)
        print(f"videos ready in {world} ({time.perf_counter() - start:.0f} s)")
        return
    device = "cuda" if a.runtime == "gpu" else "cpu"
    clip_len, crop = (16, 112) if a.input == "paper" else (4, 32)
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({where}), {os.cpu_count()} cores")

    fast = Precision(amp_dtype="bf16", channels_last=True, cudnn_benchmark=device == "cuda")
    print(f"\n| retrieval features, {clip_len}x{crop}x{crop}, batch {a.eval_batch} | clips/s |\n|---|---|")
    for name, precision in (("fp32", Precision()), ("bf16 + channels-last", fast)):
        rate = extraction_rate(device, precision, a.eval_batch, a.seconds, clip_len, crop)
        print(f"| {name} | {rate:.1f} |")
    if device == "cuda":
        torch.cuda.empty_cache()

    run_dir = a.work / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [
        f"dataset.root={world}",
        *(f"+dataset.spec.{k}={v}" for k, v in spec.items()),
        f"dataset.pretrain.clips_per_video={a.clips_per_video}",
        f"runtime={a.runtime}",
        f"input={a.input}",
        f"ssl={a.ssl}",
        "partition.num_clients=5",
        "strategy.clients_per_round=5",
        "num_rounds=2",
        "finetune.datasets=[]",
        "runtime.progress=false",
        f"hydra.run.dir={run_dir}",
        *a.overrides,
    ]
    env = job_env(a.work)
    if a.decode_backend == "cache":
        cache = a.work / "frame-cache"
        cache.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        build = [
            sys.executable,
            "-m",
            "fedvssl.cache",
            *(o for o in overrides if not o.startswith("hydra.")),
            f"runtime.frame_cache={cache}",
        ]
        if subprocess.run([*build, f"hydra.run.dir={a.work / 'cache-build'}"], cwd=ROOT, env=env).returncode:
            raise SystemExit("the frame cache build failed")
        print(f"frame cache built in {time.perf_counter() - start:.0f} s")
        overrides += ["runtime.decode_backend=cache", f"runtime.frame_cache={cache}"]
    print(f"\nmain job: {' '.join(overrides)}")
    history, wall = run_job(overrides, a.work, run_dir)
    last = history[-1]
    clips = sum(last["num_examples"]) * a.clips_per_video
    round_s = last["time_s"]
    slowest = max(last["train-time"])
    fixed = round_s - slowest  # sending, aggregating, checkpointing: what does not grow with the clips
    rate = clips / slowest
    paper_round = fixed + PAPER_CLIENTS_PER_ROUND * PAPER_CLIPS_PER_CLIENT / rate
    title = f"one round, {a.ssl}, {clip_len}x{crop}x{crop}, 5 clients ({a.runtime}, decode {a.decode_backend})"
    print(f"\n| {title} | measured |\n|---|---|")
    print(f"| whole job (2 rounds, with data generation and Ray's start) | {wall:.0f} s |")
    print(f"| round 1 / round 2 wall time | {history[0]['time_s']:.1f} s / {round_s:.1f} s |")
    print(f"| clips trained in round 2 (5 clients) | {clips} |")
    print(f"| clients' time, slowest / sum | {slowest:.1f} s / {sum(last['train-time']):.1f} s |")
    print(f"| end to end, clips/s (round 2's clips over its wall time) | {clips / round_s:.1f} |")
    print(f"| clips/s while the clients train (round 2's clips over its slowest client) | {rate:.1f} |")
    print(f"| fixed cost per round (round time less the slowest client) | {fixed:.1f} s |")
    print(f"| projected paper round (5 x {PAPER_CLIPS_PER_CLIENT} clips) | {paper_round:.0f} s |")
    print(f"| projected {PAPER_ROUNDS} rounds (no downstream evaluation) | {PAPER_ROUNDS * paper_round / 3600:.1f} h |")
    print(f"\nrun folder: {run_dir}")


if __name__ == "__main__":
    main()
