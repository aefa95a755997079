"""Everything before federated training, and ``python -m fedvssl.prepare`` for ``flwr run``.

:func:`prepare_run` readies the environment, generates the embedded data if the dataset
config asks for it, screens every video list, writes the client partitions, and writes the
resolved config that the ServerApp and ClientApps read. All checks that can stop a run happen
here, before Ray or any model starts; ``fedvssl.main`` calls it before the simulation.

``python -m fedvssl.prepare [overrides]`` composes the same Hydra config as
``fedvssl.main``, checks it, prepares the run, and prints the ``flwr run`` line that uses the
written config. The ServerApp and ClientApp read nothing else, so there is no second copy of
any default.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from fedvssl.config.checks import CONF_DIR, CONFIG_ENV, to_yaml, validate
from fedvssl.config.settings import downstream_set, pretrain_source, screening
from fedvssl.core.errors import DataError, one_line_errors
from fedvssl.core.run_folder import RunFolder
from fedvssl.data import partitions as P
from fedvssl.data.lists import PRETRAIN_FORMATS, pretrain_list, published_list, screen_downstream
from fedvssl.data.screening import skipped, usable

log = logging.getLogger("fedvssl")

# The one definition of the environment Flower runs in (the Makefile and the tests use it too).
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def generate_data(cfg: DictConfig) -> None:
    """``dataset.generate``: a callable (``_target_``) that makes the data on first use, or null.

    The embedded synthetic world names ``dataset_preparation.synthetic.ensure`` there,
    so fedvssl itself never imports ``dataset_preparation``.
    """
    if cfg.dataset.get("generate"):
        start = time.perf_counter()
        if instantiate(cfg.dataset.generate, _convert_="all"):
            log.info("generated the synthetic dataset in %s (%.1f s)", cfg.dataset.root, time.perf_counter() - start)


def screen_and_partition(cfg: DictConfig) -> None:
    """Generate the embedded data if asked to, screen every list, write the client partitions."""
    generate_data(cfg)
    checks, source = screening(cfg), pretrain_source(cfg)
    unusable = []
    for name in cfg.finetune.datasets:
        unusable += screen_downstream(downstream_set(cfg, name), checks)[3]

    pcfg = cfg.partition
    out = Path(pcfg.dir)
    if pcfg.scheme == P.PUBLISHED:
        records = published_list(out, pcfg.num_clients, Path(pcfg.class_index), Path(source.videos))
        unique = list({r.name: r for r in records}.values())
        _, bad = usable(unique, "pretraining", source.videos_root, checks)
        unusable += skipped("pretraining", "train", bad)
    else:
        listed, classes = pretrain_list(source)
        good, bad = usable(listed, "pretraining", source.videos_root, checks)
        unusable += skipped("pretraining", "train", bad)
        items = [(P.item_name(r.name), r.label + 1) for r in good]
        if PRETRAIN_FORMATS[source.format].sort_items:
            items.sort()
        try:
            clients, params = P.split(
                items, pcfg.scheme, pcfg.num_clients, pcfg.get("seed", 7), float(pcfg.get("alpha", 0.5))
            )
        except ValueError as e:
            raise DataError(f"partition: {e} ({source.videos_root}: {len(items)} usable videos)") from None
        meta = {"scheme": pcfg.scheme, **params, "sha256": P.checksum(items)}
        P.write_partition(clients, [c.replace(" ", "_") for c in classes], out, meta)
    RunFolder(cfg.run.dir).write_unusable(unusable)


def prepare_run(cfg: DictConfig) -> Path:
    """Environment, data, partitions, and the apps' config file (whose path it returns)."""
    run = RunFolder(cfg.run.dir)
    cfg.dataset.root = os.path.abspath(cfg.dataset.root)
    if not sys.stdout.isatty():
        cfg.runtime.progress = False
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("FLWR_HOME", str(run.flwr_home))
    screen_and_partition(cfg)
    run.clear_stop()
    config_path = run.write_config(to_yaml(cfg))
    os.environ[CONFIG_ENV] = str(config_path)
    return config_path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    validate(cfg)
    path = prepare_run(cfg)
    print(path)
    print(f"""flwr run . <superlink> --run-config "config-path='{path}'" --stream""")


if __name__ == "__main__":
    main()
