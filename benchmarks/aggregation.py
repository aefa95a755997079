"""Server aggregation of full CtP models: FedVSSL's streamed sum against Flower's stock FedAvg.

Both aggregate the same K client replies (Flower RecordDicts holding the 126-entry
CtP model, 40 M parameters) in the same run; with alpha=0 both compute the same
sample-weighted mean, which the script checks. It reports time and the peak of
extra memory during aggregation (tracemalloc), in units of one model.

Usage: ``python -m benchmarks.aggregation [--k 5 20 100]`` (K=100 needs about 17 GB).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import numpy as np
import torch
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedvssl.federated.aggregation import client_weights, weighted_average
from fedvssl.federated.records import LazyArrays, numpy_to_record, record_to_numpy
from fedvssl.models.r3d import R3D18
from fedvssl.ssl.ctp import CtPHead


def replies(k: int) -> tuple[list[RecordDict], int]:
    torch.manual_seed(0)
    base = {**{f"backbone.{n}": v.numpy() for n, v in R3D18(True).state_dict().items()}}
    base.update({f"head.{n}": v.numpy() for n, v in CtPHead(16).state_dict().items()})
    size = sum(v.nbytes for v in base.values())
    out = []
    for i in range(k):
        state = {n: (v + i if v.dtype.kind == "f" else v) for n, v in base.items()}
        metrics = MetricRecord({"num-examples": 100 + i, "train-loss": 1.0 + 0.01 * i})
        out.append(RecordDict({"arrays": numpy_to_record(state), "metrics": metrics}))
    return out, size


def measure(fn):
    gc.collect()
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, elapsed, peak


def ours(contents: list[RecordDict]) -> dict[str, np.ndarray]:
    metrics = [c["metrics"] for c in contents]
    w = client_weights([m["train-loss"] for m in metrics], [m["num-examples"] for m in metrics], alpha=0.0)
    return weighted_average([LazyArrays(c["arrays"]) for c in contents], w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, nargs="+", default=[5, 20])
    a = p.parse_args()
    print("| K | stock FedAvg s | FedVSSL s | time ratio (ours/stock) | stock peak extra | FedVSSL peak extra |")
    print("|---|---|---|---|---|---|")
    for k in a.k:
        contents, size = replies(k)
        stock, t_stock, m_stock = measure(lambda c=contents: aggregate_arrayrecords(c, "num-examples"))
        mine, t_ours, m_ours = measure(lambda c=contents: ours(c))
        for name, arr in record_to_numpy(stock).items():
            np.testing.assert_allclose(mine[name], arr, rtol=1e-5, atol=1e-6, err_msg=name)
        print(
            f"| {k} | {t_stock:.2f} | {t_ours:.2f} | {t_ours / t_stock:.2f} | "
            f"{m_stock / size:.2f} models | {m_ours / size:.2f} models |"
        )
        del contents, stock, mine
    print(f"one model = {size / 2**20:.0f} MiB (126 entries)")


if __name__ == "__main__":
    main()
