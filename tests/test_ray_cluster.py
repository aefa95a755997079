"""A simulation that joins a running Ray cluster (runtime.ray_address) instead of starting its own Ray.

The head is started as the README says (``ray start --head`` on 127.0.0.1) and stopped by
the PID of its process group.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT
from loopback import free_port, is_loopback, kill_if_same, listening_addresses, wait_for, wait_for_port

from fedvssl.core.processes import cmdline, descendants

pytestmark = pytest.mark.slow  # a Ray head and a simulation in subprocesses

BIN = Path(sys.executable).parent
HEAD_CPUS = 2
# Ray binds to the machine's outward address unless told it runs on one machine only; this
# keeps the head's GCS, raylet, object manager and client server on 127.0.0.1.
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def outward_ip() -> str | None:
    from fedvssl.federated.backend import _outward_ip

    return _outward_ip()


@pytest.mark.parametrize("listening", [False, True])
def test_bad_ray_address_is_one_line(tmp_path, flower_env, listening):
    """Nothing at the address, or a server on 127.0.0.1 only that Ray would look for elsewhere."""
    if listening and outward_ip() is None:
        pytest.skip("this machine has no outward address for Ray to prefer")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        if listening:
            server.listen()
        port = server.getsockname()[1]
        env = {k: v for k, v in flower_env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        proc = subprocess.run(
            [sys.executable, "-m", "fedvssl.main", f"runtime.ray_address=127.0.0.1:{port}"]
            + [f"dataset.root={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedvssl: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    expected = "the head listens on loopback only" if listening else "no Ray cluster answers there"
    assert len(errors) == 1 and f"runtime.ray_address=127.0.0.1:{port}: {expected}" in errors[0], errors
    assert not (tmp_path / "data").exists()


def test_simulation_attaches_to_a_ray_cluster(tmp_path, flower_env, world):
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    port = free_port()
    head_log = tmp_path / "head.log"
    with open(head_log, "w") as out:
        head = subprocess.Popen(
            [BIN / "ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}"]
            + [f"--ray-client-server-port={free_port()}", f"--num-cpus={HEAD_CPUS}", "--num-gpus=0"]
            + ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
            env={**flower_env, **LOOPBACK_RAY},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    seen: dict[int, str] = {}  # every process under the head: pid -> command line
    driver = None
    try:
        wait_for_port(port, timeout=120)
        wait_for(lambda: "Ray runtime started" in head_log.read_text(), 120, head_log.read_text())
        run = tmp_path / "run"
        # The driver needs the loopback variable too: Ray would look for the head at the outward address.
        with open(tmp_path / "main.log", "w") as out:
            driver = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fedvssl.main",
                    "input=tiny",
                    "model=small",
                    "dataset.pretrain.clips_per_video=1",
                    "partition.num_clients=2",
                    "num_rounds=2",
                ]
                + ["finetune=ucf101", "finetune.retrieval.num_clips=2", "runtime.eval_workers=0"]
                + [f"runtime.ray_address=127.0.0.1:{port}", "runtime.num_cpus_per_client=1"]
                + [f"dataset.root={world}", f"hydra.run.dir={run}"],
                cwd=ROOT,
                env={**flower_env, **LOOPBACK_RAY},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.time() + 600
        actors, driver_children, addresses = set(), set(), set()
        while driver.poll() is None:
            if time.time() > deadline:
                driver.kill()
                pytest.fail("the simulation did not end:\n" + (tmp_path / "main.log").read_text()[-3000:])
            under_head = {p: c for p in descendants(head.pid) if (c := cmdline(p))}
            seen.update(under_head)
            actors |= {p for p, c in under_head.items() if c.startswith("ray::ClientAppActor")}
            driver_children |= {c.split()[0] for p in descendants(driver.pid) if (c := cmdline(p))}
            addresses |= listening_addresses([head.pid, *under_head])
            time.sleep(0.5)
        text = (tmp_path / "main.log").read_text()
        assert driver.returncode == 0, text[-3000:]
        # The clients ran as actors of the cluster, one per CPU of the head (1 CPU per client).
        assert len(actors) == HEAD_CPUS // 1, (actors, text[-2000:])
        # The driver started no Ray of its own.
        assert not any("gcs_server" in c or "raylet" in c for c in driver_children), driver_children
        history = json.loads((run / "history.json").read_text())
        assert [h["round"] for h in history] == [1, 2] and all(sorted(h["partition_ids"]) == [0, 1] for h in history)
        assert (run / "results.json").is_file()
        assert head.poll() is None, "the cluster must outlive the simulation"
        assert f"::ffff:127.0.0.1:{port}" in addresses or f"127.0.0.1:{port}" in addresses, addresses
        assert all(is_loopback(a) for a in addresses), addresses
    finally:
        if driver is not None and driver.poll() is None:
            driver.terminate()  # fedvssl.main stops what it started on SIGTERM
            driver.wait(timeout=60)
        seen.update({p: c for p in descendants(head.pid) if (c := cmdline(p))})
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        for pid, line in seen.items():  # anything of the head's that outlived it
            kill_if_same(pid, line)
        shutil.rmtree(temp, ignore_errors=True)
