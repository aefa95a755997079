"""Dress rehearsal of the paper's run structure on a CPU: 100 clients, 5 per round.

The real main job (Flower's simulation on Ray, the FedVSSL strategy, checkpoint
retention, client heads on disk) runs at the tiny input on the synthetic world,
with non-iid label windows written in the published ``client_dist<k>.json`` schema
(``partition=published``): client k holds videos of classes k and k+1 (mod 8), each
class's videos split evenly over the clients that share it. One Ray actor serves
all clients (``runtime.num_cpus_per_client`` = the CPU count), so clients run one
after another and

    framework overhead per round = round wall time - sum of the clients' train-time

(train-time covers a client's whole local work: model build, data, training). The
round wall time runs from one round's start to the next one's (``started_at`` in the
history), so it counts what happens between rounds too: the checkpoint and history
writes, retention, Flower's loop. From
``history.json`` it reports the overhead, the server's and the client process's
resident memory over the rounds (slope by least squares over rounds 3..R), and the
run folder's disk use, then projects them to 540 rounds. Memory is split as Ray's
documentation advises: a process's own memory is its RSS less the pages of Ray's
shared-memory object store it has mapped (``server_shm_mb``, ``shm-mb``); those pages
are shared by both processes, counted in each one's RSS, and bounded by the object
store's size, so they are reported once, apart.

Usage: ``python -m benchmarks.rehearsal [--rounds 20] [--clients 100] [--per-round 5] [--object-store-mb M]
[main-job overrides ...]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.jobs import run_job
from dataset_preparation.synthetic import WorldSpec, ensure
from fedvssl.data import partitions as P
from fedvssl.data.kinetics import read_kinetics_csv

PAPER_ROUNDS = 540


def label_windows(world: Path, num_clients: int, out: Path) -> list[int]:
    """Client k: classes k and k+1 (mod C), each class split evenly over its clients; published schema."""
    records, classes = read_kinetics_csv(world / "kinetics400/annotations/train.csv", world / "kinetics400")
    by_class: dict[int, list[tuple[str, int]]] = {}
    for r in sorted(records, key=lambda r: r.name):
        by_class.setdefault(r.label, []).append((P.item_name(r.name), r.label + 1))
    clients: list[list[tuple[str, int]]] = [[] for _ in range(num_clients)]
    for c, items in by_class.items():
        holders = [k for k in range(num_clients) if c in (k % len(classes), (k + 1) % len(classes))]
        for j, k in enumerate(holders):
            clients[k] += items[j * len(items) // len(holders) : (j + 1) * len(items) // len(holders)]
    P.write_partition(clients, [c.replace(" ", "_") for c in classes], out, {"scheme": "label windows"})
    return [len(c) for c in clients]


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def slope(values: list[float]) -> float:
    """Least-squares change per round."""
    return float(np.polyfit(np.arange(len(values)), values, 1)[0]) if len(values) > 1 else 0.0


def halves(series: list[float]) -> str:
    """The largest value of the first and of the second half of the rounds.

    The heap is given back once it passes a bound (``strategy.release_heap``), so memory
    is a saw-tooth: a slope over a few rounds can catch one rising edge, while a process
    that does not grow has the same peak in both halves.
    """
    mid = len(series) // 2
    return f"{max(series[:mid] or series):.0f} / {max(series[mid:]):.0f} MiB"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--videos-per-class", type=int, default=64, help="Kinetics-style videos per synthetic class")
    p.add_argument("--object-store-mb", type=int, default=None, help="runtime.object_store_mb (default: Ray's)")
    p.add_argument("overrides", nargs="*", help="more main-job overrides, e.g. strategy.transfer_dtype=bfloat16")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fedvssl-rehearsal")
    a = p.parse_args(argv)

    world = a.work / "world"
    ensure(world, WorldSpec(kinetics_per_class=a.videos_per_class))
    counts = label_windows(world, a.clients, a.work / "partition")
    run_dir = a.work / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    cpus = os.cpu_count() or 1
    overrides = [
        f"dataset.root={world}",
        f"+dataset.spec.kinetics_per_class={a.videos_per_class}",
        "partition=published",
        f"partition.dir={a.work / 'partition'}",
        f"partition.num_clients={a.clients}",
        f"strategy.clients_per_round={a.per_round}",
        "input=tiny",
        "dataset.pretrain.clips_per_video=1",  # the reference's one local epoch (the demo's 25 is for learning)
        f"num_rounds={a.rounds}",
        "finetune.datasets=[]",
        f"runtime.num_cpus_per_client={cpus}",
        f"runtime.torch_threads={cpus}",
        f"hydra.run.dir={run_dir}",
    ]
    if a.object_store_mb is not None:
        overrides.append(f"runtime.object_store_mb={a.object_store_mb}")
    overrides += a.overrides
    print(f"{a.clients} clients ({min(counts)}-{max(counts)} videos each), {a.per_round} per round, {a.rounds} rounds")
    history, wall = run_job(overrides, a.work, run_dir)
    steady = history[2:] if len(history) > 3 else history
    # A round's wall time: to the next round's start; the last round (no next) by its own time_s.
    starts = [h.get("started_at") for h in history]
    walls = [
        b - a if a is not None and b is not None else h["time_s"]
        for h, a, b in zip(history, starts, [*starts[1:], None], strict=True)
    ]
    walls[-1] = history[-1]["time_s"]
    overhead = [w - sum(h["train-time"]) for w, h in zip(walls, history, strict=True)]
    between = [w - h["time_s"] for w, h in zip(walls[:-1], history, strict=False)]
    compute = [sum(h["train-time"]) for h in history]
    server = [h["server_rss_mb"] - h.get("server_shm_mb", 0.0) for h in steady]
    # One actor serves all clients: its latest figure of the round is the largest.
    client = [max(np.subtract(h["rss-mb"], h.get("shm-mb", 0.0))) for h in steady]
    store = [h.get("server_shm_mb", 0.0) for h in steady]
    disk = disk_bytes(run_dir)
    checkpoints = disk_bytes(run_dir / "checkpoints")
    heads = disk_bytes(run_dir / "clients")
    over = float(np.mean(overhead[2:] if len(overhead) > 3 else overhead))

    def projected(series: list[float]) -> str:  # a falling series is projected flat, not below zero
        return f"{series[-1] + max(0.0, slope(series)) * (PAPER_ROUNDS - len(history)):.0f} MiB"

    rows = [
        ("rounds run", f"{len(history)}", ""),
        ("wall time (whole job)", f"{wall:.0f} s", ""),
        ("clients' compute per round (mean)", f"{np.mean(compute):.2f} s", ""),
        ("framework overhead per round (rounds 3..R)", f"{over:.2f} s", f"{over * PAPER_ROUNDS / 60:.1f} min in all"),
        ("  of which between rounds (files, Flower's loop)", f"{np.mean(between[2:] or between):.2f} s", ""),
        ("overhead, round 1 (Ray start, sampling query)", f"{overhead[0]:.2f} s", "once"),
        ("server memory less object store (last round)", f"{server[-1]:.0f} MiB", projected(server)),
        ("server memory slope", f"{slope(server):+.2f} MiB/round", ""),
        ("server memory peak, first / second half", halves(server), "flat if the halves agree"),
        ("client process memory less object store (last round)", f"{client[-1]:.0f} MiB", projected(client)),
        ("client process memory slope", f"{slope(client):+.2f} MiB/round", ""),
        ("client process memory peak, first / second half", halves(client), ""),
        ("Ray object store pages mapped (last round)", f"{store[-1]:.0f} MiB", "bounded by the store's size"),
        ("object store pages slope", f"{slope(store):+.2f} MiB/round", ""),
        ("run folder on disk", f"{disk / 1e6:.1f} MB", ""),
        ("  checkpoints (retention)", f"{checkpoints / 1e6:.1f} MB", ""),
        ("  client heads (<= 2 per client)", f"{heads / 1e6:.2f} MB", ""),
    ]
    print(f"\n| measure | measured | projected to {PAPER_ROUNDS} rounds |\n|---|---|---|")
    for name, value, projected in rows:
        print(f"| {name} | {value} | {projected} |")
    print(f"\nrun folder: {run_dir}")


if __name__ == "__main__":
    main()
