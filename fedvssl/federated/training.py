"""One client's local work: rebuild the model, train one epoch, keep the head.

Plain torch: a fresh SGD each call, gradient clipping, a mean of batch losses.
Flower appears only in ``client_app.py``, which wraps :func:`local_train`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fedvssl.config.settings import ClientSettings
from fedvssl.core.errors import DataError
from fedvssl.core.processes import rss_mb
from fedvssl.core.run_folder import RunFolder
from fedvssl.data.client_dist import client_file, read_partition
from fedvssl.data.datasets import PretextDataset
from fedvssl.federated.proximal import ProximalTerm
from fedvssl.models.device import device_of
from fedvssl.models.precision import FP32, Precision, autocast, grad_scaler, pin_memory, prepare, to_device
from fedvssl.models.r3d import BACKBONE_PREFIX
from fedvssl.ssl.base import PretextModel, SSLMethod

log = logging.getLogger(__name__)


def seed_of(*parts: int) -> int:
    """A 32-bit seed derived from several integers (run seed, round, client ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def shared_keys(model: torch.nn.Module, share: str) -> list[str]:
    """The state_dict entries that travel: the backbone (BN buffers included), or everything."""
    keys = list(model.state_dict())
    return keys if share == "full" else [k for k in keys if k.startswith(BACKBONE_PREFIX)]


def state_to_numpy(model: torch.nn.Module, keys: list[str]) -> dict[str, np.ndarray]:
    sd = model.state_dict()
    return {k: sd[k].detach().cpu().numpy() for k in keys}


def load_shared(model: torch.nn.Module, arrays: Mapping[str, np.ndarray], keys: list[str]) -> None:
    """Overwrite exactly the shared entries; anything else missing or extra is an error."""
    if list(arrays) != keys:
        extra, missing = set(arrays) - set(keys), set(keys) - set(arrays)
        raise ValueError(f"global model does not match: unexpected {sorted(extra)[:3]}, missing {sorted(missing)[:3]}")
    sd = model.state_dict()
    for k, v in arrays.items():
        if tuple(v.shape) != tuple(sd[k].shape):
            raise ValueError(f"global model entry {k} has shape {tuple(v.shape)}, expected {tuple(sd[k].shape)}")
        # Copied by NumPy into the tensor's memory (the model is still on the CPU): ``v`` may be
        # a read-only view on a message's bytes, which torch.from_numpy would refuse to wrap.
        np.copyto(sd[k].numpy(), np.asarray(v), casting="same_kind")


def inject_fault(rate: float, seed: int, partition_id: int, server_round: int) -> None:
    """``fault.client_failure_rate``: fail on purpose, reproducibly from (seed, round, client)."""
    if rate > 0 and np.random.default_rng((seed, server_round, partition_id, 7919)).random() < rate:
        raise RuntimeError(
            f"injected failure of client {partition_id} in round {server_round} (fault.client_failure_rate={rate})"
        )


def train_epoch(
    model: PretextModel,
    method: SSLMethod,
    loader: DataLoader,
    progress: bool = False,
    device: str | torch.device = "cpu",
    precision: Precision = FP32,
    proximal: ProximalTerm | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean loss, mean metrics and the sample count.

    ``model`` is already on ``device`` in ``precision``'s format (:func:`prepare`); the
    forward pass and the loss run under its autocast, the backward pass outside it.
    ``proximal``: FedProx's term, added to each step's loss (the reported loss is the pretext loss).
    """
    device = torch.device(device)
    model.train()
    optimizer = method.make_optimizer(model)
    scaler = grad_scaler(precision, device)
    clip = method.optimizer.get("grad_clip")
    total, seen, sums, replaced = 0.0, 0, {}, []
    # Seconds spent waiting for batches (decoding and augmenting, in this process without
    # loader workers) and computing on them: the demo profile (benchmarks/demo_profile.py).
    waited = computed = 0.0
    tick = time.perf_counter()
    for batch in tqdm(loader, desc="local epoch", disable=not progress, leave=False):
        got = time.perf_counter()
        waited += got - tick
        bad = batch.pop("bad", None)
        if bad is not None:
            replaced += [int(b) for b in torch.as_tensor(bad).tolist() if b >= 0]
        with autocast(precision, device):
            loss, metrics = method.loss(model, to_device(batch, precision, device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()}")
        _step(model, loss if proximal is None else loss + proximal(), optimizer, scaler, clip, precision)
        n = len(next(iter(batch.values())))
        total += loss.item() * n
        seen += n
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v * n
        tick = time.perf_counter()
        computed += tick - got
    if seen == 0:
        raise ValueError("the client has no training samples")
    if replaced:
        paths = [loader.dataset.records[i].path for i in replaced[:3]]
        log.warning("replaced %d undecodable video(s) this epoch; first: %s", len(replaced), paths)
    means = {k: v / seen for k, v in sums.items()}
    times = {"time-data": waited, "time-compute": computed}
    return {"train-loss": total / seen, "num-examples": seen, "bad-videos": len(replaced), **means, **times}


def _step(model: PretextModel, loss: torch.Tensor, optimizer, scaler, clip: float | None, p: Precision) -> None:
    """Backward, clip, and the optimiser step, unless the gradients are not finite."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip and check the true gradients (a no-op unless fp16)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or math.inf)
    # A finite loss can still give non-finite gradients (a faulty kernel: see precision.Conv3d);
    # one such step would turn every weight into NaN and poison the global model. fp16's
    # scaler skips its own overflowed steps, so only other precisions stop here.
    if not torch.isfinite(norm) and not scaler.is_enabled():
        raise FloatingPointError(
            f"non-finite gradients (norm {norm.item()}) after a finite loss"
            f" with runtime.precision.amp_dtype={p.amp_dtype}"
        )
    scaler.step(optimizer)
    scaler.update()


def local_train(
    s: ClientSettings,
    method: SSLMethod,
    partition_id: int,
    server_round: int,
    global_arrays: Mapping[str, np.ndarray],
    proximal_mu: float = 0.0,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """A client's participation: own head + global shared tensors -> one epoch -> shared tensors.

    ``proximal_mu`` > 0: FedProx's ``mu / 2 * ||w - w_global||^2`` over the shared parameters.
    """
    start = time.perf_counter()
    torch.set_num_threads(s.torch_threads)
    share = s.share
    device = device_of(s.device)
    model = method.build_model(s.seed)
    keys = shared_keys(model, share)
    inject_fault(s.failure_rate, s.seed, partition_id, server_round)
    # Dropout and any other torch randomness: fixed per (seed, round, client), whatever
    # this process (a Ray actor serving many clients) ran before.
    torch.manual_seed(seed_of(s.seed, server_round, partition_id))
    run = RunFolder(s.run_dir)
    if share != "full" and (head := run.load_head_before(partition_id, server_round)) is not None:
        model.load_state_dict(head, strict=False)
    load_shared(model, global_arrays, keys)
    prepare(model, s.precision, device)
    proximal = ProximalTerm(model, keys, proximal_mu) if proximal_mu else None  # anchored at the global model

    loader = client_loader(s, method, run, partition_id, server_round)
    set_up = time.perf_counter()
    metrics = train_epoch(
        model, method, loader, progress=s.progress, device=device, precision=s.precision, proximal=proximal
    )
    trained = time.perf_counter()
    metrics["num-examples"] = len(loader.dataset.records) // s.clips_per_video  # n_k: the client's videos

    if share != "full":
        sd = model.state_dict()
        run.save_head(partition_id, server_round, {k: v for k, v in sd.items() if k not in keys})
    shared = state_to_numpy(model, keys)
    end = time.perf_counter()
    # The client's own wall time around the epoch (model, head, data set-up; head and reply).
    metrics.update({"time-setup": set_up - start, "time-teardown": end - trained, "train-time": end - start})
    metrics["rss-mb"] = rss_mb()  # of the process serving this client (a Ray actor in simulation)
    log.info("client %d round %d: %s", partition_id, server_round, metrics)
    return shared, metrics


def client_loader(
    s: ClientSettings, method: SSLMethod, run: RunFolder, partition_id: int, server_round: int
) -> DataLoader:
    """The client's usable videos, each ``s.clips_per_video`` times, in a seeded shuffled loader."""
    partition_file = client_file(Path(s.partition_dir), partition_id + 1)
    listed = read_partition(partition_file, Path(s.videos))
    # Missing and unusable videos (screened by the main job) are not trained on, so
    # n_k counts the videos this client really has.
    unusable = run.unusable_paths()
    records = [r for r in listed if r.path and r.path not in unusable]
    if not records:
        raise DataError(
            f"client {partition_id}: none of the {len(listed)} videos in {partition_file} is usable "
            f"(first: {listed[0].name}); see {run.unusable.name}"
        )
    # More than one clip per video per round: a longer local epoch over a small dataset.
    # Each repeat draws its own clip (the draws are seeded by position in the list).
    examples = records * s.clips_per_video
    seed = (s.seed, server_round, partition_id)
    dataset = PretextDataset(examples, method, s.decode_backend, seed, frame_cache=s.frame_cache)
    return DataLoader(
        dataset,
        batch_size=s.batch_size,
        shuffle=True,
        num_workers=s.num_workers,
        # A deeper queue per worker absorbs slow videos (long seeks) without starving the GPU;
        # torch refuses the argument without workers.
        prefetch_factor=s.prefetch_factor if s.num_workers > 0 else None,
        persistent_workers=False,
        pin_memory=pin_memory(device_of(s.device)),
        generator=torch.Generator().manual_seed(seed_of(s.seed, server_round, partition_id)),
    )
