"""The same apps under Flower's deployment runtime: 1 SuperLink and 2 SuperNodes on 127.0.0.1."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT

from fedvssl.files import load_npz

pytestmark = pytest.mark.slow  # real SuperLink and SuperNode processes

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def test_loopback_deployment(tmp_path, flower_env, world):
    run = tmp_path / "run"
    prepare = subprocess.run(
        [sys.executable, "-m", "fedvssl.prepare", "input=tiny", "partition.num_clients=2", "num_rounds=2"]
        + [f"dataset.root={world}", f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=flower_env,
        capture_output=True,
        text=True,
    )
    assert prepare.returncode == 0, prepare.stderr[-2000:]
    config_path = run / "fedvssl.yaml"
    assert prepare.stdout.splitlines()[0] == str(config_path)

    env = {**flower_env, "FLWR_HOME": str(tmp_path / "flwr"), "PATH": f"{BIN}:{os.environ['PATH']}"}
    link = free_port()
    procs = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name, args):
        with open(logs / f"{name}.log", "w") as out:  # the child keeps its own descriptor
            procs.append(
                subprocess.Popen(
                    args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    try:
        start(
            "superlink",
            [
                BIN / "flower-superlink",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(link),
                "--disable-runtime-dependency-installation",
            ],
        )
        wait_for_port(link)
        for pid in (0, 1):
            start(
                f"supernode{pid}",
                [
                    BIN / "flower-supernode",
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={pid} num-partitions=2",
                ],
            )
        subprocess.run([BIN / "flwr", "--help"], env=env, capture_output=True)  # creates $FLWR_HOME/config.toml
        with open(tmp_path / "flwr" / "config.toml", "a") as f:
            f.write(f'\n[superlink.loopback]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
        flwr = subprocess.run(
            [BIN / "flwr", "run", ".", "loopback", "--run-config", f"config-path='{config_path}'", "--stream"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert flwr.returncode == 0, flwr.stdout[-3000:] + flwr.stderr[-3000:]
        deadline = time.time() + 120
        while not (run / "checkpoints" / "round-2.npz").is_file() and time.time() < deadline:
            time.sleep(1)
    finally:
        for p in procs:  # only what this test started, by PID (their process groups)
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    final = load_npz(run / "checkpoints" / "round-2.npz")
    assert len(final) == 120 and all(np.isfinite(v).all() for v in final.values())
    history = json.loads((run / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2] and all(sorted(h["partition_ids"]) == [0, 1] for h in history)
