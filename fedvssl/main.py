"""Single entry point: federated pretraining in Flower's simulation, then evaluation.

``python -m fedvssl.main [group=option ...] [key=value ...]`` (add ``-m`` for a
Hydra multirun sweep). Everything a run produces lands in its Hydra run folder.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fedvssl.config import CONFIG_ENV, ConfigError, to_yaml, validate
from fedvssl.dataset import DataError

log = logging.getLogger("fedvssl")

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def prepare_data(cfg: DictConfig) -> None:
    """Generate the embedded dataset if asked to, then write the client partitions."""
    from dataset_preparation.partition import kinetics_iid
    from dataset_preparation.synthetic import WorldSpec, ensure

    if cfg.dataset.get("generate", False):
        start = time.perf_counter()
        if ensure(cfg.dataset.root, WorldSpec()):
            log.info("generated the synthetic dataset in %s (%.1f s)", cfg.dataset.root, time.perf_counter() - start)
    if cfg.partition.scheme == "iid":
        kinetics_iid(
            Path(cfg.dataset.pretrain.csv),
            Path(cfg.dataset.pretrain.videos),
            Path(cfg.partition.dir),
            int(cfg.partition.num_clients),
            int(cfg.partition.seed),
        )
    elif not (Path(cfg.partition.dir) / "client_dist1.json").is_file():
        raise DataError(f"partition.dir={cfg.partition.dir} holds no client_dist1.json")


def simulate(cfg: DictConfig) -> None:
    """Run the ServerApp and ClientApp in Flower's simulation runtime on Ray."""
    from flwr.simulation import run_simulation

    from fedvssl.client_app import app as client_app
    from fedvssl.server_app import app as server_app

    rt = cfg.runtime
    backend = {
        "client_resources": {"num_cpus": int(rt.num_cpus_per_client), "num_gpus": float(rt.num_gpus_per_client)},
        "init_args": {"include_dashboard": False, "logging_level": "error"},
    }
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=int(cfg.partition.num_clients),
        backend_config=backend,
    )


def evaluate(cfg: DictConfig, checkpoint: Path) -> dict:
    from fedvssl.checkpoint import load_npz
    from fedvssl.evaluate import build_backbone, retrieval

    backbones = {"pretrained": build_backbone(load_npz(checkpoint), int(cfg.seed))}
    if cfg.finetune.retrieval.compare_random_init:
        backbones["random_init"] = build_backbone(None, int(cfg.seed))
    return retrieval(cfg, backbones)


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from fedvssl.checkpoint import write_json, write_text
    from fedvssl.results import retrieval_table

    run_dir = Path(cfg.run.dir)
    cfg.dataset.root = os.path.abspath(cfg.dataset.root)
    if not sys.stdout.isatty():
        cfg.runtime.progress = False
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("FLWR_HOME", str(run_dir / "flwr"))
    times = {}

    start = time.perf_counter()
    prepare_data(cfg)
    times["data_s"] = time.perf_counter() - start

    config_path = run_dir / "fedvssl.yaml"
    write_text(config_path, to_yaml(cfg))
    os.environ[CONFIG_ENV] = str(config_path)
    start = time.perf_counter()
    simulate(cfg)
    times["pretrain_s"] = time.perf_counter() - start
    checkpoint = run_dir / "checkpoints" / f"round-{cfg.num_rounds}.npz"
    if not checkpoint.is_file():
        raise RuntimeError(f"the simulation ended without {checkpoint}; see the log above")

    start = time.perf_counter()
    results = evaluate(cfg, checkpoint)
    times["evaluation_s"] = time.perf_counter() - start
    results["run"] = {
        "checkpoint": str(checkpoint),
        "rounds": int(cfg.num_rounds),
        "overrides": list(HydraConfig.get().overrides.task),
        "wall_time_s": {k: round(v, 2) for k, v in times.items()},
    }
    write_json(run_dir / "results.json", results)
    table = retrieval_table(results, list(cfg.finetune.retrieval.ks))
    write_text(run_dir / "results.md", f"# Retrieval (R@k, %)\n\n{table}")
    print(f"\nRetrieval after {cfg.num_rounds} rounds ({run_dir}):\n\n{table}")
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg)
        run(cfg)
    except (ConfigError, DataError) as e:
        print(f"fedvssl: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
