"""Where the demo's wall time goes: start-up, each round's parts, evaluation; settings side by side.

Runs ``python -m fedvssl.main`` once per setting, one after another in one run, on the same
generated world (its video probe cache warmed first, so no setting pays for it), and
explains each wall time from what the run itself records, not from a second loop:

- ``results.json``: the data set-up, pretraining and evaluation seconds (``run.wall_time_s``);
- ``history.json``: each round's start (``started_at``) and length (``time_s``), and per client
  the reply's own clock: ``time-compute`` (forward, backward, SGD), ``time-data`` (waiting for
  batches: decoding and augmenting), ``time-setup`` (model, head, global weights, data
  loader), ``time-teardown`` (head and reply tensors) and ``time-client`` (the whole message),
  with ``pid``, the process (Ray actor) that served the client;
- the benchmark's clock around the process: start-up is process start to round 1.

A round's clients share the actors, so its critical path is the busiest actor: its summed
``time-client`` against the round's wall time (start to next start) leaves the server's and
Ray's share (messages, scheduling, aggregation, checkpoint and history). *Pure compute* is
that actor's summed ``time-compute``; round / pure compute is the overhead factor.

Usage: ``python -m benchmarks.demo_profile --compare old,default --rounds 4`` (about 5 minutes
for the two on 2 cores). The projection for ``make run`` is start-up + round 1 + 19 later
rounds at their mean + evaluation and exit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset_preparation.synthetic import ensure
from fedvssl.data.video import BUDGET_ENV
from fedvssl.prepare import FLOWER_ENV

ROOT = Path(__file__).resolve().parents[1]
DEMO_ROUNDS = 20
# Named settings: overrides of conf/ (the default: none) and environment variables. "old" is the
# demo before 2026-12-06: fp32 in the default memory format, every clip decoded from its file.
PRESETS: dict[str, tuple[list[str], dict[str, str]]] = {
    "default": ([], {}),
    "old": (["runtime.precision.amp_dtype=none", "runtime.precision.channels_last=false"], {BUDGET_ENV: "0"}),
    "fp32": (["runtime.precision.amp_dtype=none"], {}),
    "clip_by_clip": ([], {BUDGET_ENV: "0"}),
    # One client actor with both cores for its intra-op threads, against two with one each.
    "one_actor": (["runtime.num_cpus_per_client=2", "runtime.torch_threads=2"], {}),
}


@dataclass
class Profile:
    """One run's wall time, explained (seconds)."""

    wall: float
    startup: float
    data: float  # of the start-up: prepare_run (screening, partitions)
    rounds: list[dict[str, float]]
    evaluation: float
    after: float  # Ray's shutdown, history plot, results, exit (evaluation excluded)
    loss: list[float]
    recall: dict[str, float]  # R@1 per dataset, pretrained and random init


def actor_sums(entry: dict) -> dict[int, dict[str, float]]:
    """Per process (Ray actor), the summed client timings of one round."""
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    keys = ("time-compute", "time-data", "time-setup", "time-teardown", "time-client")
    for i, pid in enumerate(entry["pid"]):
        for k in keys:
            sums[int(pid)][k] += float(entry[k][i])
    return sums


def round_parts(history: list[dict]) -> list[dict[str, float]]:
    """Each round's wall time (start to next start) and its parts on the busiest actor."""
    gaps = [b["started_at"] - a["started_at"] - a["time_s"] for a, b in zip(history, history[1:], strict=False)]
    last_gap = statistics.median(gaps) if gaps else 0.0  # the last round's checkpoint and history
    parts = []
    for h, gap in zip(history, [*gaps, last_gap], strict=True):
        busiest = max(actor_sums(h).values(), key=lambda a: a["time-client"])
        wall = h["time_s"] + gap
        parts.append(
            {
                "wall": wall,
                "compute": busiest["time-compute"],
                "data": busiest["time-data"],
                "client_rest": busiest["time-client"] - busiest["time-compute"] - busiest["time-data"],
                "server_ray": wall - busiest["time-client"],
            }
        )
    return parts


def profile(run_dir: Path, started: float, ended: float) -> Profile:
    history = json.loads((run_dir / "history.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    times = results["run"]["wall_time_s"]
    first, last = history[0], history[-1]
    evaluation = times.get("evaluation_s", 0.0)
    loss = [float(np.average(h["train_loss"], weights=h["num_examples"])) for h in history]
    return Profile(
        wall=ended - started,
        startup=first["started_at"] - started,
        data=times["data_s"],
        rounds=round_parts(history),
        evaluation=evaluation,
        after=ended - (last["started_at"] + last["time_s"]) - evaluation,
        loss=loss,
        recall=recall_at_1(results),
    )


def recall_at_1(results: dict) -> dict[str, float]:
    """R@1 of the pretrained backbone and of its random-init control, per evaluated dataset."""
    out = {}
    for name, entry in results.items():
        if isinstance(entry, dict) and "retrieval" in entry:
            out[f"{name} R@1, pretrained"] = entry["retrieval"]["R@1"]
            if "random_init" in entry:
                out[f"{name} R@1, random init"] = entry["random_init"]["retrieval"]["R@1"]
    return out


def run_setting(name: str, common: list[str], out: Path) -> Profile:
    run_dir = out / name
    overrides, variables = PRESETS[name]
    env = {**os.environ, **FLOWER_ENV, **variables, "FLWR_HOME": tempfile.mkdtemp(prefix="flwr-")}
    cmd = [sys.executable, "-m", "fedvssl.main", *common, *overrides, f"hydra.run.dir={run_dir}"]
    shown = " ".join(f"{k}={v}" for k, v in variables.items())
    print(f"{name}: {shown} {' '.join(cmd[2:])}".strip(), flush=True)
    started = time.time()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    ended = time.time()
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}); see {out / f'{name}.log'}")
    return profile(run_dir, started, ended)


def mean(rounds: list[dict[str, float]], key: str) -> float:
    later = rounds[1:] or rounds  # round 1 also starts the actors: shown apart
    return statistics.mean(r[key] for r in later)


def projected(p: Profile) -> float:
    """``make run``'s 20 rounds: start-up, round 1, 19 rounds at the later rounds' mean, evaluation and exit."""
    return p.startup + p.rounds[0]["wall"] + (DEMO_ROUNDS - 1) * mean(p.rounds, "wall") + p.evaluation + p.after


def rows(p: Profile) -> list[tuple[str, float]]:
    n = len(p.rounds)
    return [
        ("start-up: process start to round 1", p.startup),
        ("  of which data set-up (screening, partitions)", p.data),
        ("round 1 (the client actors start)", p.rounds[0]["wall"]),
        (f"round, mean of rounds 2-{n}", mean(p.rounds, "wall")),
        ("  clients' pure compute (busiest actor)", mean(p.rounds, "compute")),
        ("  decode + augment (busiest actor)", mean(p.rounds, "data")),
        ("  client set-up + teardown (busiest actor)", mean(p.rounds, "client_rest")),
        ("  server + Ray (round - busiest actor)", mean(p.rounds, "server_ray")),
        ("evaluation (retrieval)", p.evaluation),
        ("after the rounds, evaluation excluded", p.after),
        (f"wall, {n} rounds", p.wall),
        (f"projected make run, {DEMO_ROUNDS} rounds", projected(p)),
        ("round / pure compute", mean(p.rounds, "wall") / mean(p.rounds, "compute")),
        ("weighted loss, round 1", p.loss[0]),
        (f"weighted loss, round {n}", p.loss[-1]),
        *p.recall.items(),
    ]


def table(names: list[str], profiles: list[Profile]) -> str:
    base = names[0]
    head = ["| | " + " | ".join(names) + " | " + " | ".join(f"{n} / {base}" for n in names[1:]) + " |"]
    head.append("|---" * (1 + 2 * len(names) - 1) + "|")
    columns = [dict(rows(p)) for p in profiles]
    for label in columns[0]:
        values = [c.get(label, float("nan")) for c in columns]
        fmt = "{:.3f}" if "loss" in label or "/" in label else "{:.2f}" if "R@1" in label else "{:.1f} s"
        ratios = [f"{v / values[0]:.2f}" if values[0] else "-" for v in values[1:]]
        head.append(f"| {label} | " + " | ".join(fmt.format(v) for v in values) + " | " + " | ".join(ratios) + " |")
    return "\n".join(head)


def warm_probe_cache(common: list[str], out: Path) -> None:
    """Screen every list once (``fedvssl.prepare``), so that no measured run pays for the probe cache."""
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": tempfile.mkdtemp(prefix="flwr-")}
    cmd = [sys.executable, "-m", "fedvssl.prepare", *common, f"hydra.run.dir={out / 'prepare'}"]
    subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", default="old,default", help=f"settings, the first is the base: {', '.join(PRESETS)}")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "fedvssl-bench-world"))
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("overrides", nargs="*", help="extra overrides for every setting")
    a = p.parse_args()
    names = a.compare.split(",")
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}: choose from {', '.join(PRESETS)}")
    ensure(a.root)
    out = Path(a.out or tempfile.mkdtemp(prefix="demo-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    common = [f"num_rounds={a.rounds}", f"dataset.root={a.root}", f"data.probe_cache={out / 'probe-cache'}"]
    common += a.overrides
    warm_probe_cache(common, out)
    profiles = [run_setting(n, common, out) for n in names]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    print(f"\n{when}, {os.cpu_count()} CPUs, {a.rounds} rounds, runs in {out}\n")
    print(table(names, profiles))


if __name__ == "__main__":
    main()
