"""Memory of Flower's simulation runtime over rounds, without training.

The FedVSSL strategy (memory only, no run folder) drives 100 simulated clients, 5 per
round, on Ray, exactly as the main job does, but each client echoes the global
backbone (the paper-size R3D-18: 120 tensors, 132.7 MB) back instead of training,
so a round takes a second or two and many rounds fit in a short run. Each round records,
for the server (driver) process and the client process (the one Ray actor):

* ``anon``: private heap and anonymous mappings (``RssAnon``), where a leak or glibc
  heap fragmentation shows;
* ``shm``: pages of Ray's shared-memory object store mapped into the process
  (``RssShmem``), which grows until every object-store page has been touched once;
* ``rss``: both, plus mapped files (what ``rss_mb`` and the rehearsal report).

Variants run one after another in fresh processes and are printed side by side, as
slopes (least squares over rounds 4..R) in MiB per round:

* ``trimmed``: the runtime as the main job runs it: the strategy and the client give
  the freed heap back after every round (``strategy.release_heap``, glibc's
  ``malloc_trim``);
* ``untrimmed``: the same with ``release_heap`` switched off.

Usage: ``python -m benchmarks.runtime_memory [--rounds 30] [--variants trimmed untrimmed]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.jobs import python_path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("untrimmed", "trimmed")


def memory() -> dict[str, float]:
    """This process's RssAnon, RssShmem and VmRSS in MiB."""
    fields = {"RssAnon": "anon", "RssShmem": "shm", "VmRSS": "rss"}
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in fields:
                out[fields[key]] = int(value.split()[0]) / 1024
    return out


def child(rounds: int, clients: int, per_round: int, variant: str, out: Path) -> None:
    """One simulation: the FedVSSL strategy and echoing clients; writes the per-round memory."""
    from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedvssl.federated import strategy as strategy_module
    from fedvssl.federated.records import numpy_to_record, record_to_numpy
    from fedvssl.federated.strategy import FedVSSL

    if variant == "untrimmed":
        strategy_module.release_heap = lambda: None
    from fedvssl.models.r3d import R3D18

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        # What a client does with the message besides training: decode, re-encode, reply.
        shared = {k: v.copy() for k, v in record_to_numpy(msg.content["arrays"]).items()}
        reply = numpy_to_record(shared)
        del shared
        # As the real ClientApp does after local_train (the patch above is this process's
        # only: Ray's worker imports the module afresh).
        if variant != "untrimmed":
            strategy_module.release_heap()
        metrics = {"train-loss": 1.0, "num-examples": 10, "partition-id": int(context.node_config["partition-id"])}
        metrics.update({f"client-{k}": v for k, v in memory().items()})
        return Message(content=RecordDict({"arrays": reply, "metrics": MetricRecord(metrics)}), reply_to=msg)

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"partition-id": int(context.node_config["partition-id"])})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    class Probe(FedVSSL):
        def aggregate_train(self, server_round, replies):
            result = super().aggregate_train(server_round, replies)
            self.history[-1].update({f"server-{k}": v for k, v in memory().items()})
            return result

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        state = {k: v.numpy() for k, v in R3D18().state_dict().items()}
        strategy = Probe(alpha=0.0, beta=1, share="backbone", clients_per_round=per_round, num_clients=clients, seed=0)
        strategy.start(
            grid=grid,
            initial_arrays=numpy_to_record(state),
            num_rounds=rounds,
            timeout=600.0,
            train_config=ConfigRecord({}),
        )
        keys = [k for k in strategy.history[-1] if k.startswith(("server-", "client-"))]
        out.write_text(json.dumps([{k: h[k] for k in keys} for h in strategy.history]))

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": os.cpu_count() or 1, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False, "logging_level": "error"},
        },
    )


def slope(values: list[float]) -> float:
    return float(np.polyfit(np.arange(len(values)), values, 1)[0]) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.rounds, a.clients, a.per_round, a.child, a.out)
        return

    from fedvssl.prepare import FLOWER_ENV

    work = Path(tempfile.mkdtemp(prefix="fedvssl-runtime-memory-"))
    results = {}
    for variant in a.variants:
        out = work / f"{variant}.json"
        env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(work / "flwr"), "PYTHONPATH": python_path()}
        cmd = [sys.executable, "-m", "benchmarks.runtime_memory", "--child", variant, "--out", str(out)]
        cmd += ["--rounds", str(a.rounds), "--clients", str(a.clients), "--per-round", str(a.per_round)]
        print(f"{variant}: {a.rounds} rounds ...", flush=True)
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results[variant] = json.loads(out.read_text())
        (work / f"{variant}.per-round.txt").write_text("\n".join(json.dumps(row) for row in results[variant]))

    series = [(proc, kind) for proc in ("server", "client") for kind in ("rss", "anon", "shm")]
    header = " | ".join(f"{proc} {kind}" for proc, kind in series)
    print(f"\nMiB/round over rounds 4..{a.rounds} (last round's MiB in brackets)\n")
    print(f"| variant | {header} |\n|---|{'---|' * len(series)}")
    for variant, rows in results.items():
        steady = rows[3:] if len(rows) > 4 else rows
        cells = []
        for proc, kind in series:
            # A client entry lists the round's replies; one actor serves them all, its latest is the largest.
            values = [r[f"{proc}-{kind}"] if proc == "server" else max(r[f"{proc}-{kind}"]) for r in steady]
            cells.append(f"{slope(values):+.2f} ({values[-1]:.0f})")
        print(f"| {variant} | {' | '.join(cells)} |")
    print(f"\nper-round figures: {work}")


if __name__ == "__main__":
    main()
