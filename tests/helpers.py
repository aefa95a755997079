"""Helpers shared by the test modules (fixtures live in ``conftest.py``)."""

import contextlib
import io
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
from flwr.common.typing import Parameters

from fedvssl.prepare import FLOWER_ENV
from fedvssl.ssl.speed import Speed

ROOT = Path(__file__).resolve().parents[1]

# The state_dict entries after the 120 backbone entries, per pretext method.
TAILS = {
    "ctp": [
        ("head.temporal_conv.weight", (512, 512, 2, 1, 1)),
        ("head.temporal_conv.bias", (512,)),
        ("head.fc1.weight", (512, 12800)),
        ("head.fc1.bias", (512,)),
        ("head.pred_head.weight", (64, 512)),
        ("head.pred_head.bias", (64,)),
    ],
    "vcop": [
        ("vcop_head.fc1.weight", (512, 1024)),
        ("vcop_head.fc1.bias", (512,)),
        ("vcop_head.fc2.weight", (6, 1536)),
        ("vcop_head.fc2.bias", (6,)),
    ],
    "speed": [("cls_head.fc_cls.weight", (7, 512)), ("cls_head.fc_cls.bias", (7,))],
}


def run_main(args: list[str], env: dict[str, str], timeout: float = 600):
    return run_module("fedvssl.main", args, env, timeout)


def run_module(module: str, args: list[str], env: dict[str, str], timeout: float = 600):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def flower_env_for(tmp_path: Path) -> dict[str, str]:
    """Environment for a subprocess that runs Flower: private FLWR_HOME, no telemetry."""
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(tmp_path / "flwr"), "PYTHONUNBUFFERED": "1"}
    env["FEDVSSL_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = str(ROOT)
    return env


def npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def write_layout(path, arrays, layout):
    if layout in ("a", "c"):
        params = np.empty((), dtype=object)
        params[()] = Parameters(tensors=[npy_bytes(a) for a in arrays], tensor_type="numpy.ndarray")
        extra = [np.array({}, dtype=object)] if layout == "c" else []
        np.savez(path, params, *extra)
    else:
        objs = np.empty(len(arrays), dtype=object)
        objs[:] = arrays
        np.savez(path, objs)


def make_speed(clip_len=4, crop=32, lr=0.01):
    return Speed(
        clip_len=clip_len,
        crop_size=crop,
        optimizer={"lr": lr, "momentum": 0.9, "weight_decay": 1e-4, "grad_clip": 40},
        scales=[112, 128, 144],
        flip_p=0.5,
        brightness=(0.2, 32),
        contrast=(0.2, 0.2),
        hue_saturation=(0.2, 12, 0.1),
        dropout=0.5,
    )


def process_group(pgid: int) -> list[str]:
    """The ``/proc/<pid>/stat`` lines of every live process in process group ``pgid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            if int(text.rsplit(")", 1)[1].split()[2]) == pgid:
                found.append(text)
    return found


def left_in_group(pgid: int, within_s: float) -> list[str]:
    """What is still alive in process group ``pgid`` after up to ``within_s`` seconds of waiting for it to empty."""
    deadline = time.time() + within_s
    while (left := process_group(pgid)) and time.time() < deadline:
        time.sleep(0.1)
    return left


@contextlib.contextmanager
def killing_group_after(pgid: int):
    """On leaving, SIGKILL whatever is left of process group ``pgid`` (a failed test's processes)."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def r3d_backbone_state() -> dict:
    """R3D-18's 120 backbone tensors (133 MB as float32), with trained-looking BN means and counters."""
    from fedvssl.federated.training import shared_keys, state_to_numpy

    model = make_speed().build_model(0)
    state = state_to_numpy(model, shared_keys(model, "backbone"))
    rng = np.random.default_rng(0)
    for k, v in state.items():
        if k.endswith("running_mean"):
            state[k] = rng.normal(size=v.shape).astype(np.float32)
        elif k.endswith("num_batches_tracked"):
            state[k] = np.array(123456789, np.int64)
    return state


# bfloat16 keeps 8 significant bits: rounding to nearest moves a value by at most 2^-8 of it.
BF16_REL = 2.0**-8


def assert_within_bf16_rounding(decoded: dict, state: dict) -> None:
    """Float tensors within bfloat16 rounding of ``state``, integer ones (BN counters) exact, dtypes kept."""
    for k, v in state.items():
        assert decoded[k].dtype == v.dtype and decoded[k].shape == v.shape, k
        if np.issubdtype(v.dtype, np.integer):
            np.testing.assert_array_equal(decoded[k], v)
        else:
            assert np.all(np.abs(decoded[k] - v) <= BF16_REL * np.abs(v)), k


def one_error_line(proc) -> str:
    """The single ``fedvssl: error:`` line of a command that stopped on bad input (status 2, no traceback)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedvssl: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def stamp_task_identity(monkeypatch) -> None:
    """Stamp messages with the running task's ids, as inside a ServerApp process (use in an autouse fixture)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


class StaticGrid:
    """What the strategy asks of a Grid before training: node ids, and each node's partition id (its rank)."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.queries = 0

    def get_node_ids(self):
        return list(self.nodes)

    def partition(self, node: int) -> int:
        return sorted(self.nodes).index(node)

    def send_and_receive(self, messages, timeout=None):
        from flwr.app import Message, MetricRecord, RecordDict

        self.queries += 1
        replies = []
        for m in messages:
            assert m.metadata.message_type == "query"
            content = RecordDict({"metrics": MetricRecord({"partition-id": self.partition(m.metadata.dst_node_id)})})
            replies.append(Message(content=content, reply_to=m))
        return replies


def train_reply(msg, state: dict, loss, n, pid, transfer_dtype: str = "float32", received: dict | None = None):
    """A client's reply to a train message: its tensors (as records.reply_record makes them) and the three metrics."""
    from flwr.app import Message, MetricRecord, RecordDict

    from fedvssl.federated.records import reply_record

    metrics = MetricRecord({"train-loss": loss, "num-examples": n, "partition-id": pid})
    arrays = reply_record(state, received if received is not None else state, transfer_dtype, False)
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


class InProcessFederation(StaticGrid):
    """A Grid whose nodes run this package's ClientApp in this process, one message after the other.

    The run's real ServerApp (its strategy, checkpoints, history) and real ClientApp (local
    training, heads) exchange real Flower messages through it; what it leaves out is Ray's
    transport, which the tests that run ``fedvssl.main`` on Ray cover. Node i holds partition i.
    Use it with ``stamp_task_identity``, as messages are made outside a ServerApp process.
    """

    def __init__(self, num_clients: int):
        super().__init__([1000 + i for i in range(num_clients)])

    def send_and_receive(self, messages, timeout=None):
        from flwr.app import Context, RecordDict

        from fedvssl.federated.client_app import app

        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            config = {"partition-id": self.partition(node), "num-partitions": len(self.nodes)}
            context = Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})
            replies.append(app(m, context))
        return replies


def simulate_in_process(cfg) -> None:
    """``fedvssl.main.simulate``'s work (the ServerApp over ``partition.num_clients`` nodes) in this process."""
    import torch
    from flwr.app import Context, RecordDict

    from fedvssl.federated.server_app import main as server_main

    threads = torch.get_num_threads()  # a client sets runtime.torch_threads for its process
    try:
        grid = InProcessFederation(cfg.partition.num_clients)
        server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    finally:
        torch.set_num_threads(threads)


def run_main_in_process(args: list[str], run_dir: Path) -> dict:
    """``fedvssl.main``'s run for the overrides ``args`` (checked as the entry point checks them), with its
    ServerApp and ClientApps in this process instead of Ray; the run's results."""
    import pytest
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import fedvssl.main as entry
    from fedvssl.config.checks import CONFIG_ENV, validate
    from fedvssl.federated.backend import simulation_backend

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        job = compose("config", [*args, f"run.dir={run_dir}"])
        HydraConfig.instance().set_config(compose("config", args, return_hydra_config=True))
    try:
        with pytest.MonkeyPatch.context() as mp:
            stamp_task_identity(mp)
            mp.setattr(entry, "simulate", simulate_in_process)
            mp.setenv(CONFIG_ENV, "")  # prepare_run points it at this run's config
            validate(job)
            simulation_backend(job.runtime)  # what the entry point checks before any work
            return entry.run(job)
    finally:
        HydraConfig.instance().cfg = None
