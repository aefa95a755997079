"""The retrieval monitor: a quick R@k of the global backbone every few rounds of pretraining.

A long run (the paper's 540 rounds) shows whether pretraining helps long before it
ends: every ``monitor.every`` rounds the ServerApp's strategy hands its global model
to this monitor (through Flower's server-side ``evaluate_fn``), which runs the final
evaluation's retrieval with fewer clips per video (``monitor.clips_per_video``) on
``monitor.datasets``. The seeded random-init backbone, the control, is scored once
per process at the first monitored round and reported beside every later one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from fedvssl.config.settings import EvaluationSettings
from fedvssl.downstream.protocol import evaluate_states

GLOBAL, RANDOM_INIT = "global", "random_init"


class RetrievalMonitor:
    """R@k of the global backbone on the downstream sets, with ``clips_per_video`` test clips per video.

    ``settings`` are the final evaluation's (``settings.evaluation_settings``); the
    monitor keeps their retrieval protocol and device, and runs no fine-tuning.
    """

    @staticmethod
    def check_settings(
        every: object, clips_per_video: object, datasets: object, evaluated: Sequence[str], **_: object
    ) -> None:
        """The ``monitor`` block's values, checked here and before any work (``config.validate``).

        ``evaluated`` is ``finetune.datasets``: only those sets are listed and screened
        before the run starts.
        """
        for key, value, minimum in (("monitor.every", every, 0), ("monitor.clips_per_video", clips_per_video, 1)):
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
                raise ValueError(f"{key}={value} must be an integer >= {minimum}")
        if not (isinstance(datasets, list | tuple) and datasets and all(name in evaluated for name in datasets)):
            raise ValueError(
                f"monitor.datasets={datasets} must be a non-empty subset of finetune.datasets={list(evaluated)}"
            )

    def __init__(self, settings: EvaluationSettings, every: int, clips_per_video: int, datasets: Sequence[str]) -> None:
        self.check_settings(every, clips_per_video, datasets, [d.name for d in settings.datasets])
        self.every, self.clips_per_video = every, clips_per_video
        self.compare_random_init = settings.retrieval.compare_random_init
        self.settings = replace(
            settings,
            clips=replace(settings.clips, progress=False),  # the console keeps one line per round
            retrieval=replace(settings.retrieval, num_clips=clips_per_video),
            finetune=replace(settings.finetune, enabled=False),
            datasets=[d for d in settings.datasets if d.name in datasets],
        )
        self._random_init: dict[str, dict[str, float]] | None = None

    def __call__(self, state: Mapping[str, np.ndarray]) -> dict[str, dict[str, dict[str, float]]]:
        """``{"global": {dataset: {"R@k": %}}}``, and the same under ``"random_init"`` for the control."""
        states = {GLOBAL: state}
        if self.compare_random_init and self._random_init is None:
            states[RANDOM_INIT] = None  # scored on the same decoded clips, once
        scores = evaluate_states(self.settings, states)
        results = {GLOBAL: {name: entry["retrieval"] for name, entry in scores.items()}}
        if RANDOM_INIT in states:
            self._random_init = {name: entry[RANDOM_INIT]["retrieval"] for name, entry in scores.items()}
        if self._random_init is not None:
            results[RANDOM_INIT] = self._random_init
        return results

    def summary(self, results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
        """One console line: the first two R@k per dataset (R@1, R@5), the random-init control in brackets."""
        ks = list(next(iter(results[GLOBAL].values())))[:2]
        parts = []
        for name, scores in results[GLOBAL].items():
            text = f"{name} " + " ".join(f"{k} {scores[k]:.1f}" for k in ks)
            if RANDOM_INIT in results:
                text += " (random init " + " ".join(f"{results[RANDOM_INIT][name][k]:.1f}" for k in ks) + ")"
            parts.append(text)
        clips = f"{self.clips_per_video} clip{'s' if self.clips_per_video > 1 else ''}/video"
        return f"retrieval monitor ({clips}): " + ", ".join(parts)
