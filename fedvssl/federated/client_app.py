"""Flower ClientApp: one local epoch of the configured pretext task per message."""

from __future__ import annotations

import os
import time

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedvssl.config.checks import CONFIG_KEY, build_method, from_yaml
from fedvssl.config.settings import client_settings
from fedvssl.core.processes import object_store_mb, release_heap
from fedvssl.federated.client_dp import clipping_mod
from fedvssl.federated.records import LazyArrays, is_in_memory, reply_record
from fedvssl.federated.training import local_train

# Client-side clipping for central DP (strategy.dp with a ClientSide wrapper): Flower's mods,
# applied only when the server's config asks for them (client_dp.py).
app = ClientApp(mods=[clipping_mod])

# Per-SuperNode settings (``flower-supernode --node-config "..."``) that override the
# server's config, for federations where every node has its own disks.
NODE_OVERRIDES = {
    "partition-dir": "partition.dir",  # folder holding this node's client_dist<k>.json
    "videos": "dataset.pretrain.videos",  # this node's video folder
    "state-dir": "run.dir",  # where this node keeps its head between rounds
    "frame-cache": "runtime.frame_cache",  # this node's frame cache (with runtime.decode_backend=cache)
}


def visible_gpu() -> int:
    """The first GPU this process may use (Ray sets CUDA_VISIBLE_DEVICES per actor); -1 for none or unset.

    Recorded per client in the history, it shows how Ray packed the clients onto the GPUs.
    """
    ids = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(ids) if ids.isdigit() else -1


def node_config(cfg, context: Context):
    """The run config with this node's own paths applied."""
    for key, dotted in NODE_OVERRIDES.items():
        if key in context.node_config:
            OmegaConf.update(cfg, dotted, str(context.node_config[key]))
    return cfg


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The message carries the client's part of the run config; the node config says which partition is ours."""
    start = time.perf_counter()
    config = msg.content["config"]
    cfg = node_config(from_yaml(str(config[CONFIG_KEY])), context)
    partition_id = int(context.node_config["partition-id"])
    arrays: ArrayRecord = msg.content["arrays"]
    # A view on the message's bytes: each tensor is copied once, straight into the model.
    received = LazyArrays(arrays)
    # FedProx (strategy=fedprox): mu comes with every round, as Flower's FedProx sends it.
    mu = float(config.get("proximal-mu", 0.0))
    shared, metrics = local_train(
        client_settings(cfg), build_method(cfg), partition_id, int(config["server-round"]), received, mu
    )
    attack = instantiate(cfg.fault.attack) if cfg.get("fault", {}).get("attack") else None
    if attack is not None and attack.applies(partition_id):  # benchmarks/poisoning.py
        shared, metrics = attack(shared, received, metrics, (cfg.seed, int(config["server-round"]), partition_id))
    metrics["partition-id"] = partition_id
    if mu:
        metrics["proximal-mu"] = mu  # in the history: the client trained with FedProx's term
    # Where the client ran: the GPU Ray gave its process, and the process (one actor serves several clients).
    metrics["gpu"] = visible_gpu()
    metrics["pid"] = os.getpid()
    # The model, the batches and the decoded global arrays of this participation are freed:
    # once they pass a bound, give them back, so that the process serving clients does not
    # keep its peak (see release_heap). The object store's pages in its RSS are counted apart.
    release_heap()
    metrics["shm-mb"] = object_store_mb()
    # The reply travels in the dtype the server sent (strategy.transfer_dtype; in bfloat16 as the
    # update); the model trained in float32. NumPy-backed if the server's record was: then it
    # passes Ray's object store without a pickled copy (records.py).
    reply = reply_record(shared, received, str(config.get("transfer-dtype", "float32")), is_in_memory(arrays))
    metrics["time-client"] = time.perf_counter() - start  # the whole message, local_train's train-time within it
    content = RecordDict({"arrays": reply, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, so it can sample partitions by seed."""
    metrics = MetricRecord({"partition-id": int(context.node_config["partition-id"])})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
