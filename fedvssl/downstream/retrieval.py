"""Nearest-neighbour clip retrieval (FedVSSL's "R@k").

Each video is described by the mean over its test clips of the layer4 map pooled
to 2x3x3 (9,216-d for R3D-18). Test videos query the train videos; the ranking is
cosine similarity (the query norm does not change a row's order, so only the
gallery is normalised, as in the reference). R@k is the percentage of queries
with at least one same-class video among their top k.

A checkpoint comes from outside: a backbone whose tensors hold NaN or Inf, or negative
BatchNorm variances (:func:`bad_tensor`), or whose descriptors are not finite
(:class:`NonFiniteFeatures`), stops the evaluation instead of scoring NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fedvssl.core.errors import DataError
from fedvssl.models.precision import CPU, Compute

RETRIEVAL_POOL = (2, 3, 3)


class NonFiniteFeatures(DataError):
    """A backbone whose video descriptors hold NaN or Inf; the message names the backbone and the first video."""


def bad_tensor(state: Mapping[str, np.ndarray]) -> str | None:
    """What is wrong with the first backbone tensor that cannot give finite features, if any."""
    for key, value in state.items():
        v = np.asarray(value)
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            return f"tensor {key} holds non-finite values (NaN or Inf)"
        if key.endswith("running_var") and np.any(v < 0):
            return f"tensor {key} holds negative BatchNorm variances, which give non-finite features"
    return None


@torch.inference_mode()
def extract_features(
    backbones: Mapping[str, nn.Module],
    loader: DataLoader,
    compute: Compute = CPU,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Video descriptors [N, 9216] per named backbone, and labels [N], batched, in eval mode.

    Every backbone sees the same decoded batch, so the clips are decoded once however
    many backbones (pretrained, random init) are compared. The backbones run on ``compute``'s
    device in its precision (autocast, memory format, compile); the descriptors are float32.
    """
    for backbone in backbones.values():
        compute.prepare(backbone.eval())
    pool = nn.AdaptiveAvgPool3d(RETRIEVAL_POOL)
    feats: dict[str, list[torch.Tensor]] = {tag: [] for tag in backbones}
    labels = []
    seen = 0  # videos of the loader's dataset before this batch (it is not shuffled)
    for batch in tqdm(loader, desc="features", disable=not progress, leave=False):
        keep = torch.as_tensor(batch["bad"]) < 0  # undecodable videos are left out
        views = batch["imgs"][keep]
        seen += len(keep)
        if len(views) == 0:
            continue
        b, c = views.shape[:2]
        clips = compute.input(views.flatten(0, 1))
        for tag, backbone in backbones.items():
            with compute.autocast():
                out = backbone(clips)
            feats[tag].append(pool(out.float()).flatten(1).view(b, c, -1).mean(1).cpu())
            _check_finite(tag, feats[tag][-1], keep, seen - len(keep), loader.dataset)
        labels.append(torch.as_tensor(batch["label"])[keep])
    return {tag: torch.cat(f) for tag, f in feats.items()}, torch.cat(labels)


def _check_finite(tag: str, features: torch.Tensor, keep: torch.Tensor, first: int, dataset: object) -> None:
    """Stop at a batch whose descriptors are not finite, naming the first such video (``first``: the batch's start)."""
    bad = ~torch.isfinite(features).all(1)
    if bad.any():
        index = first + int(torch.nonzero(keep)[int(torch.nonzero(bad)[0])])
        records = getattr(dataset, "records", None)
        video = records[index].name if records is not None else f"#{index}"
        raise NonFiniteFeatures(f"the {tag} backbone gives non-finite retrieval features (first: video {video})")


def recall_at_k(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10, 20, 50),
    chunk: int = 4096,
) -> dict[str, float]:
    """R@k in percent; one matrix product per chunk of queries, no loop over queries."""
    g = gallery / gallery.norm(dim=1, keepdim=True).clamp_min(1e-12)
    kmax = min(max(ks), len(gallery))
    hits = []
    for start in range(0, len(query), chunk):
        sim = query[start : start + chunk] @ g.T
        top = sim.topk(kmax, dim=1).indices
        hits.append(gallery_labels[top] == query_labels[start : start + chunk, None])
    hit = torch.cat(hits)
    return {f"R@{k}": 100.0 * hit[:, : min(k, kmax)].any(1).double().mean().item() for k in ks}
