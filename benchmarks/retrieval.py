"""Retrieval at full UCF-101 size, and feature-extraction speed.

- Ranking: 3,783 queries against 9,537 gallery videos of 9,216-d descriptors
  (UCF-101 split 1), R@1/5/10/20/50 by chunked matrix products (target: under 5 s
  on a 2-core CPU), against a one-query-at-a-time loop on a sample of the queries.
- Extraction: clips/s of the eval-mode backbone with layer4 pooling at 16x112x112.

Usage: ``python -m benchmarks.retrieval [--clips 20]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from fedvssl.downstream.retrieval import RETRIEVAL_POOL, recall_at_k
from fedvssl.models.r3d import R3D18

KS = (1, 5, 10, 20, 50)


def per_query(q, ql, g, gl) -> float:
    """Seconds per query of a plain loop (the naive way), on the given queries."""
    g = g / g.norm(dim=1, keepdim=True)
    start = time.perf_counter()
    for i in range(len(q)):
        top = (g @ q[i]).topk(max(KS)).indices
        _ = [(gl[top[:k]] == ql[i]).any() for k in KS]
    return (time.perf_counter() - start) / len(q)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=20, help="clips for the extraction measurement")
    a = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(3783, 9216, generator=gen), torch.randn(9537, 9216, generator=gen)
    ql, gl = torch.randint(0, 101, (3783,), generator=gen), torch.randint(0, 101, (9537,), generator=gen)
    recall_at_k(q[:10], ql[:10], g, gl, KS)  # warm-up
    start = time.perf_counter()
    recall_at_k(q, ql, g, gl, KS)
    ranking = time.perf_counter() - start
    loop = per_query(q[:100], ql[:100], g, gl) * len(q)
    print(f"ranking 3783 x 9537 x 9216 (torch threads {torch.get_num_threads()}): {ranking:.2f} s (target < 5 s)")
    print(f"one query at a time, extrapolated from 100 queries: {loop:.2f} s ({loop / ranking:.1f}x slower)")

    backbone = R3D18().eval()
    pool = torch.nn.AdaptiveAvgPool3d(RETRIEVAL_POOL)
    x = torch.randn(10, 3, 16, 112, 112)
    with torch.inference_mode():
        pool(backbone(x[:2]))
        start, n = time.perf_counter(), 0
        while n < a.clips:
            pool(backbone(x)).flatten(1)
            n += len(x)
    print(f"feature extraction, 16x112x112, batch 10: {n / (time.perf_counter() - start):.2f} clips/s")


if __name__ == "__main__":
    main()
