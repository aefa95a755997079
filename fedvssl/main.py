"""Single entry point: federated pretraining in Flower's simulation, then evaluation.

``python -m fedvssl.main [group=option ...] [key=value ...]`` (add ``-m`` for a
Hydra multirun sweep). Everything a run produces lands in its Hydra run folder.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fedvssl.annotations import read_class_index, read_partition
from fedvssl.config import CONF_DIR, CONFIG_ENV, ConfigError, to_yaml, validate
from fedvssl.errors import DataError, RunError, one_line_errors

log = logging.getLogger("fedvssl")


FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def prepare_data(cfg: DictConfig) -> None:
    """Generate the embedded data if asked to, screen every list, write the client partitions.

    All checks that can stop a run happen here, before Ray or any model starts.
    """
    from dataset_preparation import partition as P
    from dataset_preparation.synthetic import WorldSpec, ensure
    from fedvssl.checkpoint import write_json
    from fedvssl.sources import pretrain_list, pretrain_root, screen_downstream, skipped, usable

    if cfg.dataset.get("generate", False):
        start = time.perf_counter()
        if ensure(cfg.dataset.root, WorldSpec(**cfg.dataset.get("spec", {}))):
            log.info("generated the synthetic dataset in %s (%.1f s)", cfg.dataset.root, time.perf_counter() - start)
    unusable = []
    for name in cfg.finetune.datasets:
        unusable += screen_downstream(cfg, name)[3]

    pcfg = cfg.partition
    out = Path(pcfg.dir)
    if pcfg.scheme == "published":
        class_index = Path(pcfg.class_index)
        classes = read_class_index(class_index)
        records = []
        for k in range(1, int(pcfg.num_clients) + 1):
            records += read_partition(out / f"client_dist{k}.json", Path(cfg.dataset.pretrain.videos), classes)
        unique = list({r.name: r for r in records}.values())
        _, bad = usable(cfg, unique, "pretraining", pretrain_root(cfg))
        unusable += skipped("pretraining", "train", bad)
    else:
        listed, classes = pretrain_list(cfg)
        good, bad = usable(cfg, listed, "pretraining", pretrain_root(cfg))
        unusable += skipped("pretraining", "train", bad)
        items = [(P.item_name(r.name), r.label + 1) for r in good]
        if cfg.dataset.pretrain.format == "kinetics_csv":
            items.sort()  # as the partition command: the split does not depend on the CSV's row order
        # UCF-101 keeps trainlist order, as the Flower baseline's split does.
        try:
            clients, params = P.split(
                items, pcfg.scheme, int(pcfg.num_clients), int(pcfg.get("seed", 7)), float(pcfg.get("alpha", 0.5))
            )
        except ValueError as e:
            raise DataError(f"partition: {e} ({pretrain_root(cfg)}: {len(items)} usable videos)") from None
        meta = {"scheme": pcfg.scheme, **params, "sha256": P.checksum(items)}
        P.write_partition(clients, [c.replace(" ", "_") for c in classes], out, meta)
    write_json(Path(cfg.run.dir) / "unusable_videos.json", unusable)


def simulate(cfg: DictConfig) -> None:
    """Run the ServerApp and ClientApp in Flower's simulation runtime on Ray."""
    from flwr.simulation import run_simulation

    from fedvssl.client_app import app as client_app
    from fedvssl.processes import record_while_running, stop_descendants, stop_leftovers, stop_on_signals
    from fedvssl.server_app import app as server_app

    rt = cfg.runtime
    backend = {
        "client_resources": {"num_cpus": int(rt.num_cpus_per_client), "num_gpus": float(rt.num_gpus_per_client)},
        "init_args": {"include_dashboard": False, "logging_level": "error"},
    }
    # A SIGKILLed run cannot stop its Ray processes: record them, and stop those of killed runs.
    registry = Path(cfg.data.probe_cache) / "ray-processes.json"
    stop_leftovers(registry)
    done = threading.Event()
    recorder = record_while_running(registry, done)
    try:
        with stop_on_signals():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=int(cfg.partition.num_clients),
                backend_config=backend,
            )
    except BaseException:
        # Whatever ended the simulation early (Ray's own SIGTERM handler raises SystemExit,
        # an error, an interrupt), leave none of the processes it started behind.
        stop_descendants()
        raise
    finally:
        done.set()
        if recorder.is_alive():
            recorder.join(timeout=10)


def evaluate(cfg: DictConfig, checkpoint: Path) -> dict:
    from fedvssl.checkpoints_io import load_backbone_state
    from fedvssl.evaluate import evaluate_states

    states = {"pretrained": load_backbone_state(checkpoint)}
    if cfg.finetune.retrieval.compare_random_init:
        states["random_init"] = None
    return evaluate_states(cfg, states)


def prepare_run(cfg: DictConfig) -> Path:
    """Everything before federated training: environment, data, partitions, the apps' config file."""
    from fedvssl.checkpoint import write_text

    run_dir = Path(cfg.run.dir)
    cfg.dataset.root = os.path.abspath(cfg.dataset.root)
    if not sys.stdout.isatty():
        cfg.runtime.progress = False
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("FLWR_HOME", str(run_dir / "flwr"))
    prepare_data(cfg)
    (run_dir / "stopped.txt").unlink(missing_ok=True)
    config_path = run_dir / "fedvssl.yaml"
    write_text(config_path, to_yaml(cfg))
    os.environ[CONFIG_ENV] = str(config_path)
    return config_path


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    from fedvssl.checkpoint import write_json, write_text
    from fedvssl.results import history_frame, plot_history, results_markdown

    run_dir = Path(cfg.run.dir)
    if cfg.resume and not (run_dir / "fedvssl.yaml").is_file():
        raise ConfigError(f"resume=true: {run_dir} holds no run to resume; give the run's folder as hydra.run.dir=...")
    times = {}
    start = time.perf_counter()
    prepare_run(cfg)
    times["data_s"] = time.perf_counter() - start

    start = time.perf_counter()
    checkpoint = run_dir / "checkpoints" / f"round-{cfg.num_rounds}.npz"
    stopped = run_dir / "stopped.txt"
    try:
        simulate(cfg)
    except Exception:
        if not stopped.is_file():
            raise
    times["pretrain_s"] = time.perf_counter() - start
    if not checkpoint.is_file():
        reason = stopped.read_text().strip() if stopped.is_file() else f"no {checkpoint}; see {run_dir / 'main.log'}"
        raise RunError(f"the federated run stopped: {reason}")
    history = json.loads((run_dir / "history.json").read_text())
    history_frame(history).to_csv(run_dir / "history.csv", index=False)
    plot_history(history, run_dir / "history.png")

    start = time.perf_counter()
    results = evaluate(cfg, checkpoint)
    times["evaluation_s"] = time.perf_counter() - start
    results["run"] = {
        "checkpoint": str(checkpoint),
        "rounds": int(cfg.num_rounds),
        "pretraining_videos": sum(
            h for h in json.loads((run_dir / "partition" / "manifest.json").read_text())["counts"]
        )
        if (run_dir / "partition" / "manifest.json").is_file()
        else None,
        "overrides": list(HydraConfig.get().overrides.task),
        "wall_time_s": {k: round(v, 2) for k, v in times.items()},
    }
    write_json(run_dir / "results.json", results)
    text = results_markdown(results, list(cfg.finetune.retrieval.ks))
    write_text(run_dir / "results.md", text)
    print(f"\nAfter {cfg.num_rounds} rounds ({run_dir}):\n\n{text}")
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    validate(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
