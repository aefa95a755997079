"""Downstream evaluation of backbones on UCF-101 and HMDB-51: retrieval, and fine-tuning.

The command ``fedvssl.evaluate``, and the main job after pretraining, call :func:`evaluate_checkpoint`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from fedvssl.config.settings import EvaluationSettings
from fedvssl.core.errors import CheckpointError
from fedvssl.data.annotations import VideoRecord
from fedvssl.data.lists import downstream_splits
from fedvssl.downstream.retrieval import NonFiniteFeatures, bad_tensor, extract_features, recall_at_k
from fedvssl.downstream.views import view_loader
from fedvssl.models.r3d import seeded_backbone

log = logging.getLogger(__name__)
State = Mapping[str, np.ndarray] | None


def checkpoint_and_control(s: EvaluationSettings, checkpoint: str | Path | None) -> dict[str, State]:
    """The backbones to evaluate: the checkpoint's as ``pretrained`` (if given), then the
    seeded random-init control (``random_init``) when asked for or alone."""
    from fedvssl.models.checkpoints import load_backbone_state

    states: dict[str, State] = {"pretrained": load_backbone_state(checkpoint, s.backbone)} if checkpoint else {}
    if not checkpoint or s.retrieval.compare_random_init:
        states["random_init"] = None  # the control, on the same splits and protocol
    return states


def evaluate_checkpoint(s: EvaluationSettings, checkpoint: str | Path | None) -> tuple[dict[str, dict], str]:
    """:func:`evaluate_states` of a checkpoint's backbone (and of its control, see
    :func:`checkpoint_and_control`), or of the control alone; also the tag its scores lead with.

    A checkpoint comes from outside the process: NaN in, NaN scores out, unless stopped here.
    """
    states = checkpoint_and_control(s, checkpoint)
    if checkpoint and (problem := bad_tensor(states["pretrained"])):
        raise CheckpointError(f"{checkpoint}: {problem}")
    try:
        return evaluate_states(s, states), next(iter(states))
    except NonFiniteFeatures as e:
        raise CheckpointError(f"{checkpoint or 'the random-init backbone'}: {e}") from None


def _loader(records: list[VideoRecord], s: EvaluationSettings) -> DataLoader:
    r = s.retrieval
    return view_loader(records, s.clips, r.stride, r.num_clips, r.resize_hw, r.batch_size)


def evaluate_states(s: EvaluationSettings, states: Mapping[str, State]) -> dict[str, dict]:
    """Per downstream dataset: retrieval (and fine-tuning if enabled) of each named backbone state.

    The first state's scores sit at the top of the dataset's entry; the others (such
    as ``random_init``) under their names.
    """
    from fedvssl.downstream.finetune import finetune

    results: dict[str, dict] = {}
    ks = s.retrieval.ks
    for ds in s.datasets:
        name = ds.name
        train, test, classes = downstream_splits(ds, s.screening)
        entry: dict = {"queries": len(test), "gallery": len(train), "classes": len(classes)}
        start = time.perf_counter()
        backbones = {tag: seeded_backbone(state, s.seed, s.backbone) for tag, state in states.items()}
        compute, shown = s.clips.compute, s.clips.progress
        g, gl = extract_features(backbones, _loader(train, s), compute, progress=shown)
        q, ql = extract_features(backbones, _loader(test, s), compute, progress=shown)
        seconds = round((time.perf_counter() - start) / len(states), 2)
        for i, (tag, state) in enumerate(states.items()):
            scores: dict = {"retrieval": recall_at_k(q[tag], ql, g[tag], gl, ks), "time_s": seconds}
            if s.finetune.enabled:
                scores["finetune"] = finetune(s, train, test, len(classes), state)
            if i == 0:
                entry.update(scores)
            else:
                entry[tag] = scores
            log.info("%s %s: %s", name, tag, {k: v for k, v in scores.items() if k != "time_s"})
        results[name] = entry
    return results
