"""Build the pre-decoded frame cache of a run: ``python -m fedvssl.cache [the run's overrides]``.

It composes the same Hydra config as ``fedvssl.main``, lists every video the run
reads (the pretraining list or the published partitions, and the train and test lists
of each ``finetune.datasets``), and caches each one that has no fresh entry in
``runtime.frame_cache``, in ``runtime.frame_cache_build.workers`` processes. A second
run skips what is built, so an interrupted build resumes. The run then reads the cache
with ``runtime.decode_backend=cache runtime.frame_cache=<folder>``.
"""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fedvssl.config.checks import CONF_DIR, check_cache_build, validate
from fedvssl.config.settings import downstream_set, partition_settings, pretrain_source
from fedvssl.core.errors import RunError, one_line_errors
from fedvssl.data.frame_cache import Manifest, write_manifest
from fedvssl.data.frame_cache_build import build_cache
from fedvssl.data.lists import DOWNSTREAM_READERS
from fedvssl.data.pretraining import listed_pretraining
from fedvssl.prepare import generate_data


def listed_videos(cfg: DictConfig) -> list[str]:
    """Every video file the run lists, pretraining and downstream, in list order (resolved or not)."""
    records = listed_pretraining(pretrain_source(cfg), partition_settings(cfg))
    for name in cfg.finetune.datasets:
        ds = downstream_set(cfg, name)
        train, test, _ = DOWNSTREAM_READERS[name](Path(ds.root), ds.split)
        records += train + test
    return [r.path for r in records if r.path]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    check_cache_build(cfg)
    # The rest of the run's config is checked as the run will be, except that the cache
    # it will read is the one being built here.
    run = OmegaConf.merge(cfg, {"runtime": {"decode_backend": "auto", "frame_cache": None}})
    validate(run)
    cfg.dataset.root = os.path.abspath(cfg.dataset.root)
    generate_data(cfg)
    folder, b = Path(cfg.runtime.frame_cache), cfg.runtime.frame_cache_build
    paths = listed_videos(cfg)
    manifest = Manifest(short_side=b.short_side, quality=b.quality)
    write_manifest(folder, manifest)  # first: entries are only ever written beside their settings
    workers = len(os.sched_getaffinity(0)) if b.workers is None else b.workers
    try:
        summary = build_cache(paths, folder, manifest, workers)
    except BrokenProcessPool:
        raise RunError(
            f"frame cache {folder}: a build process died (out of memory?); what it built is kept, "
            "run the same command again to resume"
        ) from None
    print(summary.line(folder))


if __name__ == "__main__":
    main()
