"""Single entry point: federated pretraining in Flower's simulation, then evaluation.

``python -m fedvssl.main [group=option ...] [key=value ...]`` (add ``-m`` for a
Hydra multirun sweep). Everything a run produces lands in its Hydra run folder.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import threading
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fedvssl.config.checks import CONF_DIR, ConfigError, build_method, validate
from fedvssl.core.errors import RunError, one_line_errors
from fedvssl.core.run_folder import RunFolder
from fedvssl.prepare import prepare_run

log = logging.getLogger("fedvssl")


def simulate(cfg: DictConfig) -> None:
    """Run the ServerApp and ClientApp in Flower's simulation runtime on Ray."""
    from flwr.simulation import run_simulation

    from fedvssl.core.processes import record_while_running, stop_descendants, stop_leftovers, stop_on_signals
    from fedvssl.federated.backend import quiet_flower_console, simulation_backend
    from fedvssl.federated.client_app import app as client_app
    from fedvssl.federated.server_app import app as server_app

    backend = simulation_backend(cfg.runtime)
    quiet_flower_console()
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
                num_supernodes=cfg.partition.num_clients,
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


def run_downstream(cfg: DictConfig, checkpoint: Path) -> dict:
    """Downstream scores of the final global backbone (and of its random-init control)."""
    from fedvssl.config.settings import evaluation_settings
    from fedvssl.downstream.protocol import evaluate_checkpoint

    return evaluate_checkpoint(evaluation_settings(cfg), checkpoint)[0]


# Overrides that concern only pretraining or the run folder, left out of the later evaluation.
_PRETRAIN_ONLY = ("finetune.datasets=", "hydra.", "resume=", "resume_sweep=", "num_rounds=", "checkpoint=")


def evaluate_command(overrides: list[str], checkpoint: Path) -> str:
    """The ``fedvssl.evaluate`` command for a run's final checkpoint, with the run's other overrides."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(_PRETRAIN_ONLY)]
    args = [f"checkpoint={checkpoint}", *kept, f"hydra.run.dir={checkpoint.parent.parent / 'evaluation'}"]
    return "python -m fedvssl.evaluate " + " ".join(shlex.quote(a) for a in args)


def run(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fedvssl.reports.plots import history_frame, plot_history
    from fedvssl.reports.tables import precision_record, results_markdown

    run = RunFolder(cfg.run.dir)
    if cfg.resume_sweep and HydraConfig.get().mode == RunMode.MULTIRUN:
        # A sweep run again (same hydra.sweep.dir): finished jobs are kept, unfinished
        # ones continue after their last completed round.
        if run.results.is_file():
            print(f"{run.root}: finished before ({run.results.name}), skipped")
            return json.loads(run.results.read_text())
        if run.config.is_file() and not cfg.resume:
            print(f"{run.root}: unfinished, resuming")
            cfg.resume = True
    if cfg.resume and not run.config.is_file():
        raise ConfigError(f"resume=true: {run.root} holds no run to resume; give the run's folder as hydra.run.dir=...")
    times = {}
    start = time.perf_counter()
    prepare_run(cfg)
    times["data_s"] = time.perf_counter() - start

    start = time.perf_counter()
    checkpoint = run.checkpoint(cfg.num_rounds)
    try:
        simulate(cfg)
    except Exception:
        if run.stop_reason() is None:
            raise
    times["pretrain_s"] = time.perf_counter() - start
    if not checkpoint.is_file():
        reason = run.stop_reason() or f"no {checkpoint}; see {run.log}"
        raise RunError(f"the federated run stopped: {reason}")
    history = run.read_history()
    history_frame(history).to_csv(run.history_csv, index=False)
    plot_history(history, run.history_plot, chance_loss=build_method(cfg).chance_loss)

    start = time.perf_counter()
    # finetune.datasets=[]: pretraining only (evaluate the checkpoint later, elsewhere).
    results = run_downstream(cfg, checkpoint) if cfg.finetune.datasets else {}
    times["evaluation_s"] = time.perf_counter() - start
    results["run"] = {
        "checkpoint": str(checkpoint),
        "rounds": cfg.num_rounds,
        "pretraining_videos": run.pretraining_videos(),
        "overrides": list(HydraConfig.get().overrides.task),
        "experiment": HydraConfig.get().runtime.choices.get("experiment"),  # the +experiment= preset, if any
        "precision": precision_record(cfg.runtime, cfg.strategy.get("transfer_dtype", "float32")),
        "wall_time_s": {k: round(v, 2) for k, v in times.items()},
    }
    if cfg.finetune.datasets:
        text = results_markdown(results, list(cfg.finetune.retrieval.ks))
    else:
        later = evaluate_command(results["run"]["overrides"], checkpoint)
        text = f"No downstream evaluation (finetune.datasets=[]); to evaluate later:\n\n    {later}\n"
    run.write_results(results, text)
    print(f"\nAfter {cfg.num_rounds} rounds ({run.root}):\n\n{text}")
    return results


def checked_run(cfg: DictConfig) -> None:
    from fedvssl.federated.backend import simulation_backend

    validate(cfg)
    # Resources that do not fit together, or an unreachable cluster, fail before any work.
    simulation_backend(cfg.runtime)
    run(cfg)


def sweep_job(cfg: DictConfig) -> None:
    """One job of a multirun: its error costs this job, never the sweep. The one line goes to
    stderr and to the job's ``failed.txt``; the sweep's summary lists the failed jobs and the
    multirun exits 1 when it ends. Run again, the sweep retries the job (``resume_sweep``)."""
    from fedvssl.core.errors import USER_ERRORS

    try:
        checked_run(cfg)
    except USER_ERRORS as e:
        folder = RunFolder(cfg.run.dir)
        print(f"fedvssl: error: {folder.root}: {e} (the sweep goes on)", file=sys.stderr)
        folder.record_failure(str(e))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep_job(cfg)
    else:
        checked_run(cfg)


if __name__ == "__main__":
    main()
