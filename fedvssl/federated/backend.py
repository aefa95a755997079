"""The simulation's backend: Ray's init arguments and one client's resources, checked as a whole.

Flower starts as many client actors as fit in the resources given here, so numbers
that cannot fit together (GPU shares, loader workers on too few CPUs, an unreachable
cluster) stop the run here, with one line naming the key, before any work.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

from fedvssl.core.errors import ConfigError

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


def _gpu_share(share: object) -> float:
    if not isinstance(share, (int, float)) or isinstance(share, bool) or share < 0:
        raise ConfigError(f"runtime.num_gpus_per_client={share} must be a number >= 0")
    if share > 1 and share != int(share):
        # Ray's rule: a fraction shares one GPU; more than one GPU per actor must be whole GPUs.
        raise ConfigError(
            f"runtime.num_gpus_per_client={share} must be at most 1 (a share of one GPU) or a whole number of GPUs"
        )
    return float(share)


def _private_instance(rt: Mapping, init: dict, cpus_per_client: int, share: float, workers: int) -> None:
    """Size the private Ray instance in ``init``, and check that the clients that train at once fit in it."""
    cpus, gpus, store_mb = rt.get("num_cpus"), rt.get("num_gpus"), rt.get("object_store_mb")
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
            raise ConfigError(f"runtime.num_gpus_per_client={share:g} is more than the run has ({gpus_named}: {gpus})")
        # A share must fit on one GPU: floor(1 / share) actors per GPU (rounded first, as Ray
        # counts shares in units of 1/10000 and 1 / 0.1 is not exact), or whole GPUs each.
        per_gpu = int(round(1 / share, 4)) if share <= 1 else 0
        at_once = min(at_once, gpus * per_gpu if share <= 1 else int(gpus // share))
    if at_once * workers > cpus:
        raise ConfigError(
            f"runtime.num_workers={workers}: {at_once} clients train at once, with {at_once * workers} "
            f"loader workers on {cpus_named}; lower it, or raise runtime.num_cpus_per_client"
        )


def simulation_backend(rt: Mapping) -> dict:
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
    share = _gpu_share(rt.num_gpus_per_client)
    init = ray_init_args(address)
    if not address:
        _private_instance(rt, init, cpus_per_client, share, workers)
    elif any(rt.get(k) is not None for k in ("num_cpus", "num_gpus", "object_store_mb")):
        raise ConfigError(
            f"runtime.num_cpus={rt.get('num_cpus')} / runtime.num_gpus={rt.get('num_gpus')} / "
            f"runtime.object_store_mb={rt.get('object_store_mb')} size a private Ray instance; with "
            "runtime.ray_address they must stay null (a cluster's are its nodes' --num-cpus / --num-gpus / "
            "--object-store-memory)"
        )
    return {"client_resources": {"num_cpus": cpus_per_client, "num_gpus": share}, "init_args": init}


def quiet_flower_console() -> None:
    """Flower's lines go to main.log once, through the root logger, and not to the console.

    Flower gives its logger a console handler of its own and level DEBUG, so that every
    line appeared twice on the console (its handler and Hydra's) and DEBUG lines in main.log.
    Its handlers are removed through ``logging`` alone: Flower's handler object is not public API.
    """
    flower = logging.getLogger("flwr")
    for handler in list(flower.handlers):
        flower.removeHandler(handler)
    flower.setLevel(logging.INFO)
