"""What one poisoning client costs the demo, under each of the server's defences.

The demo world with 4 clients (all of them every round), one of them an attacker
(``fault.attack.client=0``). Each job is the real main job; its retrieval R@1 gain over
the same job's random-init control is what the table reports, per dataset, beside the
clean run, as the mean over the seeds.

Attacks (``fault.attack.kind``, ``fedvssl/federated/attacks.py``):

- ``signflip``: the update reversed and scaled x10;
- ``lie``: a random update of the honest update's norm, and a reported loss of 0;
- ``nonfinite``: one tensor all NaN.

Defences, fixed before any run (not tuned on these numbers):

- ``none``: the server as it was before replies were checked (:class:`Trusting`): a
  reply of the right keys and shapes counts whatever its values and metrics;
- ``checks``: the default server (every reply checked, ``replies.py``);
- ``bounds``: the checks plus the influence bounds: no client above twice its equal
  share of the weight (``strategy.max_client_weight=0.5`` for 4 clients) and no update
  norm above twice the round's median (``strategy.max_update_norm_ratio=2``, rejected);
- ``median``: the checks and Flower's coordinate-wise median (``strategy=fedmedian``).

A job that the attack stops (every client failing once the global model is NaN) has no
gain: the table says ``stopped``. Finished jobs are kept in ``--out``, so the same command
run again skips them and can be run in parts (``--seeds``, ``--attacks``, ``--defences``).

Usage: ``python -m benchmarks.poisoning [--seeds 0 1] [--rounds 20] [--out outputs/poisoning]
[--attacks signflip lie nonfinite] [--defences none checks bounds median] [-- main-job overrides ...]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from benchmarks.jobs import ROOT, job_env
from fedvssl.federated.replies import REQUIRED_METRICS, Reply, check_tensors, failure, single
from fedvssl.federated.strategy import FedVSSL, update_norm

ATTACKS = ("signflip", "lie", "nonfinite")
DEFENCES: Mapping[str, list[str]] = {
    "none": ["strategy._target_=benchmarks.poisoning.Trusting"],
    "checks": [],
    "bounds": ["strategy.max_client_weight=0.5", "strategy.max_update_norm_ratio=2"],
    "median": ["strategy=fedmedian"],
}


class Trusting(FedVSSL):
    """The server before reply checks, for the benchmark's ``none`` row: values and metrics are believed.

    A reply still needs the global model's keys and shapes (the aggregation could not add
    it up otherwise), as before the checks, where another shape raised in the server.
    """

    def accept(self, node: int, message, taken: set[int]) -> Reply | dict:
        try:
            metrics = single(message.content.metric_records, "MetricRecord", node)
            arrays = single(message.content.array_records, "ArrayRecord", node)
            state = check_tensors(arrays, self._round["expected"])
            norm = update_norm(state, None if self.transfer_dtype == "bfloat16" else self._previous)
            extra = {k: float(v) for k, v in metrics.items() if k not in REQUIRED_METRICS}
            pid = int(metrics["partition-id"])
            return Reply(node, pid, float(metrics["train-loss"]), int(metrics["num-examples"]), arrays, state, norm,
                         extra=extra, message=message)  # fmt: skip
        except Exception as e:  # what the server could not have added up at all
            return failure(node, self._partitions, f"unreadable reply ({type(e).__name__}: {e})")


def job(out: Path, seed: int, attack: str | None, defence: str, rounds: int, extra: list[str]) -> dict:
    """One main job (skipped if its results are in ``out``): its R@1 gains, or that it stopped."""
    name = f"seed{seed}-{attack or 'clean'}-{defence}"
    run_dir = out / name
    results = run_dir / "results.json"
    if not results.is_file() and not (run_dir / "stopped.json").is_file():
        overrides = [
            f"seed={seed}",
            f"num_rounds={rounds}",
            "partition.num_clients=4",
            *DEFENCES[defence],
            *([f"fault.attack.kind={attack}", "fault.attack.client=0"] if attack else []),
            *extra,
            f"hydra.run.dir={run_dir}",
        ]
        print(f"{name}: running", flush=True)
        command = [sys.executable, "-m", "fedvssl.main", *overrides]
        proc = subprocess.run(command, cwd=ROOT, env=job_env(out), stderr=subprocess.PIPE, text=True)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            # The server's own record of a stop in training, or else the run's one-line error (an
            # evaluation that refuses the non-finite features of a model the attack blew up).
            errors = [line for line in proc.stderr.splitlines() if line.startswith("fedvssl: error:")]
            if (run_dir / "stopped.txt").is_file():
                reason = (run_dir / "stopped.txt").read_text().strip()
            else:
                reason = errors[-1].removeprefix("fedvssl: error:").strip() if errors else ""
            (run_dir / "stopped.json").write_text(json.dumps({"returncode": proc.returncode, "reason": reason}))
    if (run_dir / "stopped.json").is_file():
        return {"stopped": json.loads((run_dir / "stopped.json").read_text())}
    scores = json.loads(results.read_text())
    gains = {}
    for dataset in ("ucf101", "hmdb51"):
        entry = scores[dataset]  # the pretrained backbone's scores, and its random-init control's
        gains[dataset] = entry["retrieval"]["R@1"] - entry["random_init"]["retrieval"]["R@1"]
    return {"gain": gains}


def cell(values: list[dict], dataset: str) -> str:
    gains = [v["gain"][dataset] for v in values if "gain" in v]
    stopped = len(values) - len(gains)
    if not gains:
        return "stopped"
    text = f"{np.mean(gains):+.2f}"
    return text + (f" ({stopped} stopped)" if stopped else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("outputs/poisoning"))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    parser.add_argument("overrides", nargs="*", help="more main-job overrides, for every job")
    a = parser.parse_args()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    clean = [job(out, s, None, "checks", a.rounds, a.overrides) for s in a.seeds]
    table = {(k, d): [job(out, s, k, d, a.rounds, a.overrides) for s in a.seeds] for k in a.attacks for d in a.defences}
    seeds = ", ".join(map(str, a.seeds))
    print(f"\nR@1 gain over random init (points), mean over seeds {seeds}; {a.rounds} rounds, 4 clients")
    print("\n| attack | defence | ucf101 | hmdb51 | share of the clean gain (mean of both) |")
    print("|---|---|---|---|---|")
    clean_mean = {d: np.mean([c["gain"][d] for c in clean]) for d in ("ucf101", "hmdb51")}
    print(f"| none (clean) | checks | {cell(clean, 'ucf101')} | {cell(clean, 'hmdb51')} | 1.00 |")
    for (attack, defence), values in table.items():
        gains = [v for v in values if "gain" in v]
        if gains:
            kept = np.mean([np.mean([v["gain"][d] for v in gains]) / clean_mean[d] for d in clean_mean])
            share = f"{kept:.2f}" if math.isfinite(kept) else "n/a"
        else:
            share = "0 (stopped)"
        print(f"| {attack} | {defence} | {cell(values, 'ucf101')} | {cell(values, 'hmdb51')} | {share} |")


if __name__ == "__main__":
    main()
