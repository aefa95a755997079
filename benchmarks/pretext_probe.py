"""Does a pretext task learn, centrally, on the synthetic world? A fast loop for tuning the demo.

One process, no Flower: the configured method samples from the world's Kinetics
list exactly as a client does (``PretextDataset``, the method's loss, its SGD and
gradient clipping), for ``--steps`` steps; then the main job's retrieval compares the
result with its random initialisation on the same queries. It prints the loss and
pretext score per epoch (chance for Speed: ln 7 = 1.95) and the R@k of both.

Usage: ``python -m benchmarks.pretext_probe --steps 300 [hydra overrides ...]``, e.g.
``python -m benchmarks.pretext_probe --steps 300 input.crop_size=48 ssl.flip_p=0 train.batch_size=8``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, RandomSampler

from dataset_preparation.synthetic import WorldSpec, ensure
from fedvssl.config.checks import CONF_DIR, build_method, validate
from fedvssl.config.settings import evaluation_settings, pretrain_source
from fedvssl.data.datasets import PretextDataset
from fedvssl.data.lists import pretrain_list
from fedvssl.downstream.protocol import evaluate_states
from fedvssl.federated.training import train_epoch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="SGD steps in all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for fedvssl.main")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", ["run.dir=.", "runtime.progress=false", *a.overrides])
    validate(cfg)
    ensure(cfg.dataset.root, WorldSpec(**cfg.dataset.get("spec", {})))
    cfg.dataset.root = str(Path(cfg.dataset.root).resolve())
    method = build_method(cfg)
    model = method.build_model(int(cfg.seed))
    records, _ = pretrain_list(pretrain_source(cfg))
    batch = int(cfg.train.batch_size)
    steps_per_epoch = len(records) // batch
    start, step, epoch = time.perf_counter(), 0, 0
    print(f"{method.__class__.__name__}, {len(records)} videos, batch {batch}, {a.steps} steps")
    while step < a.steps:
        epoch += 1
        dataset = PretextDataset(
            records,
            method,
            cfg.runtime.decode_backend,
            seed=(int(cfg.seed), epoch, 0),
            frame_cache=cfg.runtime.get("frame_cache"),
        )
        # A fresh optimiser per epoch, as a client's round; every step is a full batch.
        take = min(steps_per_epoch, a.steps - step) * batch
        sampler = RandomSampler(dataset, num_samples=take, generator=torch.Generator().manual_seed(epoch))
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=a.workers)
        metrics = train_epoch(model, method, loader)
        step += len(loader)
        scores = {k: round(v, 3) for k, v in metrics.items() if k not in ("num-examples", "bad-videos")}
        print(f"epoch {epoch} step {step} {scores} {time.perf_counter() - start:.0f} s", flush=True)
    state = {k: v.numpy() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    results = evaluate_states(evaluation_settings(cfg), {"pretrained": state, "random_init": None})
    for name, entry in results.items():
        ours, control = entry["retrieval"], entry["random_init"]["retrieval"]
        print(f"{name} ({entry['queries']} queries): R@1/5/10 pretrained", [round(ours[k], 1) for k in ours][:3])
        print(f"{name} ({entry['queries']} queries): R@1/5/10 random init", [round(control[k], 1) for k in control][:3])


if __name__ == "__main__":
    main()
