"""Single entry point: federated pretraining in Flower's simulation, then evaluation.

``python -m fedvssl.main [group=option ...] [key=value ...]`` (add ``-m`` for a
Hydra multirun sweep). Everything a run produces lands in its Hydra run folder.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import threading
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fedvssl.config import CONF_DIR, ConfigError, build_method, validate
from fedvssl.errors import RunError, one_line_errors
from fedvssl.run_folder import RunFolder
from fedvssl.run_setup import set_up_run

log = logging.getLogger("fedvssl")


# Ray's switch for "this cluster is this one machine": it then keeps every address on 127.0.0.1.
RAY_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_init_args(address: str | None) -> dict:
    """``ray.init`` arguments: a private Ray instance, or the running cluster at ``address``.

    With ``runtime.ray_address`` (``host:port`` of a head started with ``ray start --head``,
    or ``auto`` for the one on this machine), the simulation's actors run on that cluster's
    nodes, and ``runtime.num_cpus_per_client`` / ``num_gpus_per_client`` are counted against
    its CPUs and GPUs. Ray's own settings (object store, dashboard) are the cluster's then.
    """
    if not address:
        return {"include_dashboard": False, "logging_level": "error"}
    address = str(address)
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"runtime.ray_address={address} must be host:port (the head's GCS port) or auto")
        # Ray keeps retrying an address it cannot reach: fail in a second with one line instead.
        if not _answers(host, int(port)):
            raise ConfigError(
                f"runtime.ray_address={address}: no Ray cluster answers there; "
                "start its head with `ray start --head --port=<port>`"
            )
        # Unless told the cluster is this machine alone, Ray replaces a loopback address by the
        # machine's outward one, where a head bound to 127.0.0.1 does not answer.
        outward = _outward_ip()
        if (
            host in ("127.0.0.1", "localhost", "::1")
            and os.environ.get(RAY_SINGLE_MACHINE) != "0"
            and outward is not None
            and not _answers(outward, int(port))
        ):
            raise ConfigError(
                f"runtime.ray_address={address}: the head listens on loopback only, and Ray would look for it "
                f"at {outward}:{port}; set {RAY_SINGLE_MACHINE}=0 here too, as for the head"
            )
    return {"address": address, "logging_level": "error"}


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
        return True
    except OSError:
        return False


def _outward_ip() -> str | None:
    """The address Ray takes for this machine (a UDP connect sends nothing); None if only loopback."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("8.8.8.8", 80))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def _count(value: object, key: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={value} must be an integer >= {minimum}")
    return value


def detected_gpus() -> int:
    """GPUs on this machine, as Ray would find them (it also reads CUDA_VISIBLE_DEVICES)."""
    import torch

    return torch.cuda.device_count()


def simulation_backend(rt: DictConfig) -> dict:
    """Flower's backend config (Ray's init args, one client's resources), checked as a whole.

    ``runtime.num_cpus`` / ``runtime.num_gpus`` size the private Ray instance (null: what
    this machine has); ``num_cpus_per_client`` / ``num_gpus_per_client`` size one client's
    actor, a GPU fraction packing 1/fraction clients onto each GPU. Flower starts as many
    actors as fit, and each client's DataLoader adds ``num_workers`` processes, so the
    clients that train at once must leave a CPU for every loader worker.
    """
    address = rt.get("ray_address")
    cpus_per_client = _count(rt.num_cpus_per_client, "runtime.num_cpus_per_client", 1)
    workers = _count(rt.num_workers, "runtime.num_workers", 0)
    _count(rt.get("prefetch_factor", 2), "runtime.prefetch_factor", 1)
    share = rt.num_gpus_per_client
    if not isinstance(share, (int, float)) or isinstance(share, bool) or share < 0:
        raise ConfigError(f"runtime.num_gpus_per_client={share} must be a number >= 0")
    if share > 1 and share != int(share):
        # Ray's rule: a fraction shares one GPU; more than one GPU per actor must be whole GPUs.
        raise ConfigError(
            f"runtime.num_gpus_per_client={share} must be at most 1 (a share of one GPU) or a whole number of GPUs"
        )
    cpus, gpus = rt.get("num_cpus"), rt.get("num_gpus")
    store_mb = rt.get("object_store_mb")
    init = ray_init_args(address)
    if address:
        if cpus is not None or gpus is not None or store_mb is not None:
            raise ConfigError(
                f"runtime.num_cpus={cpus} / runtime.num_gpus={gpus} / runtime.object_store_mb={store_mb} size a "
                "private Ray instance; with runtime.ray_address they must stay null (a cluster's are its nodes' "
                "--num-cpus / --num-gpus / --object-store-memory)"
            )
    else:
        if store_mb is not None:
            # Every model message passes through Ray's object store, whose pages count in the
            # RSS of each process that maps them; by default it may take 30% of the memory.
            # Ray refuses less than 75 MiB; a round needs room for its messages in flight.
            init["object_store_memory"] = _count(store_mb, "runtime.object_store_mb", 100) * 2**20
        # Ray can be told of more CPUs or GPUs than exist (its resources are logical); Ray then
        # still gives each actor its share and CUDA_VISIBLE_DEVICES.
        if cpus is not None:
            init["num_cpus"] = _count(cpus, "runtime.num_cpus", 1)
        if gpus is not None:
            init["num_gpus"] = _count(gpus, "runtime.num_gpus", 0)
        cpus_named = f"runtime.num_cpus={cpus}" if cpus is not None else f"the {os.cpu_count()} CPUs here"
        cpus = (os.cpu_count() or 1) if cpus is None else cpus
        gpus_named = f"runtime.num_gpus={gpus}" if gpus is not None else "the GPUs detected here"
        if share > 0 and gpus is None:
            gpus = detected_gpus()
        if cpus_per_client > cpus:
            raise ConfigError(f"runtime.num_cpus_per_client={cpus_per_client} is more than the run has ({cpus_named})")
        at_once = cpus // cpus_per_client
        if share > 0:
            if share > gpus:
                raise ConfigError(
                    f"runtime.num_gpus_per_client={share} is more than the run has ({gpus_named}: {gpus})"
                )
            # A share must fit on one GPU: floor(1 / share) actors per GPU (rounded first, as Ray
            # counts shares in units of 1/10000 and 1 / 0.1 is not exact), or whole GPUs each.
            per_gpu = int(round(1 / share, 4)) if share <= 1 else 0
            at_once = min(at_once, gpus * per_gpu if share <= 1 else int(gpus // share))
        if at_once * workers > cpus:
            raise ConfigError(
                f"runtime.num_workers={workers}: {at_once} clients train at once, with {at_once * workers} "
                f"loader workers on {cpus_named}; lower it, or raise runtime.num_cpus_per_client"
            )
    return {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": float(share)}, "init_args": init}


def quiet_flower_console() -> None:
    """Flower's lines go to main.log once, through the root logger, and not to the console.

    Flower gives its logger a console handler of its own and level DEBUG, so that every
    line appeared twice on the console (its handler and Hydra's) and DEBUG lines in main.log.
    """
    from flwr.supercore.logger import console_handler

    flower = logging.getLogger("flwr")
    flower.removeHandler(console_handler)
    flower.setLevel(logging.INFO)


def simulate(cfg: DictConfig) -> None:
    """Run the ServerApp and ClientApp in Flower's simulation runtime on Ray."""
    from flwr.simulation import run_simulation

    from fedvssl.federated.client_app import app as client_app
    from fedvssl.federated.server_app import app as server_app
    from fedvssl.processes import record_while_running, stop_descendants, stop_leftovers, stop_on_signals

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


def evaluate(cfg: DictConfig, checkpoint: Path) -> dict:
    """Downstream scores of the final global backbone (and of its random-init control)."""
    from fedvssl.downstream.evaluate import checkpoint_and_control, evaluate_states
    from fedvssl.settings import evaluation_settings

    settings = evaluation_settings(cfg)
    return evaluate_states(settings, checkpoint_and_control(settings, checkpoint))


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
    from fedvssl.reports.tables import results_markdown

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
    set_up_run(cfg)
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
    results = evaluate(cfg, checkpoint) if cfg.finetune.datasets else {}
    times["evaluation_s"] = time.perf_counter() - start
    results["run"] = {
        "checkpoint": str(checkpoint),
        "rounds": cfg.num_rounds,
        "pretraining_videos": run.pretraining_videos(),
        "overrides": list(HydraConfig.get().overrides.task),
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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> None:
    validate(cfg)
    # Resources that do not fit together, or an unreachable cluster, fail before any work.
    simulation_backend(cfg.runtime)
    run(cfg)


if __name__ == "__main__":
    main()
