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
from fedvssl.config.settings import downstream_set, partition_settings, pretrain_source, screening
from fedvssl.core.errors import one_line_errors
from fedvssl.core.run_folder import RunFolder
from fedvssl.data.lists import screen_downstream
from fedvssl.data.pretraining import partition_pretraining

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
    checks = screening(cfg)
    unusable = [e for name in cfg.finetune.datasets for e in screen_downstream(downstream_set(cfg, name), checks)[3]]
    unusable += partition_pretraining(pretrain_source(cfg), partition_settings(cfg), checks)
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
