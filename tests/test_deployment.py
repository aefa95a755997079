"""The same apps under Flower's deployment runtime: real SuperLink and SuperNode processes on 127.0.0.1.

Secured (TLS and SuperNode authentication, with the certificates
``fedvssl.federated.certificates`` writes), a plain insecure loopback federation of 3
SuperNodes that loses one in the middle of a round, and a hostile SuperNode. (The plain
federation's first round is the whole of a plain deployment, so it has no test of its own.)
Every process a test starts is stopped by its PID, with what Flower started under it.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT
from loopback import free_port, is_loopback, kill_if_same, listening_addresses, wait_for, wait_for_port

from fedvssl.core.files import load_npz
from fedvssl.core.processes import cmdline, descendants
from fedvssl.models.r3d import R3D18, BackboneSize

pytestmark = pytest.mark.slow  # real SuperLink and SuperNode processes

BIN = Path(sys.executable).parent
# The demo's backbone (model=small, what `python -m fedvssl.prepare` gives by default) at tiny
# inputs: these tests are about Flower's deployment runtime, whose cost is per process and round.
DEPLOYED = ["input=tiny", "model=small", "dataset.pretrain.clips_per_video=1"]
BACKBONE_KEYS = len(R3D18(size=BackboneSize(width=16, blocks=1)).state_dict())


class Federation:
    """Flower processes started by one test, each in its own process group, all stopped by PID."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.home = tmp_path / "flwr"
        self.env = {**env, "FLWR_HOME": str(self.home), "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.cwd = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}
        self.spawned: dict[int, str] = {}  # what Flower started under our processes: pid -> command line
        self.port = free_port()

    def start(self, name: str, *args: str | Path) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "w") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [str(a) for a in args],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def superlink(self, *security: str | Path) -> None:
        self.start(
            "superlink",
            BIN / "flower-superlink",
            *(security or ["--insecure"]),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        )
        wait_for_port(self.port)

    def supernode(
        self, name: str, partition: int, partitions: int, *security: str | Path, node_config: str = ""
    ) -> subprocess.Popen:
        return self.start(
            name,
            BIN / "flower-supernode",
            *(security or ["--insecure"]),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={partition} num-partitions={partitions} {node_config}".strip(),
        )

    def connection(self, name: str, **keys: str | bool) -> None:
        """Add ``[superlink.<name>]`` to $FLWR_HOME/config.toml (``flwr --help`` creates the file)."""
        if not (self.home / "config.toml").is_file():
            subprocess.run([BIN / "flwr", "--help"], env=self.env, capture_output=True)
        lines = [f"\n[superlink.{name}]", f'address = "127.0.0.1:{self.port}"']
        lines += [f"{k.replace('_', '-')} = {json.dumps(v)}" for k, v in keys.items()]
        with open(self.home / "config.toml", "a") as f:
            f.write("\n".join(lines) + "\n")

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [BIN / "flwr", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def run(self, connection: str, config_path: Path, app: str | Path = ".") -> subprocess.Popen:
        """``flwr run`` of ``app`` (the project's apps) in the background; it ends when the run ends (``--stream``)."""
        with open(self.logs / "flwr-run.log", "w") as out:
            proc = subprocess.Popen(
                [BIN / "flwr", "run", str(app), connection, "--run-config", f"config-path='{config_path}'", "--stream"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs["flwr-run"] = proc
        return proc

    def note_spawned(self) -> None:
        """Remember what Flower started under our processes (SuperExec and ClientApps run in sessions of their own)."""
        for proc in self.procs.values():
            for pid in descendants(proc.pid):
                if (line := cmdline(pid)) is not None:
                    self.spawned.setdefault(pid, line)

    def kill(self, name: str) -> None:
        """SIGKILL one process and everything under it, as a crash would."""
        proc = self.procs[name]
        below = {pid: cmdline(pid) for pid in descendants(proc.pid)}
        os.killpg(proc.pid, signal.SIGKILL)
        for pid, line in below.items():
            kill_if_same(pid, line)
        proc.wait()

    def stop(self) -> None:
        self.note_spawned()
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Flower's SuperExecs exit on their own once their parent is gone; do not wait for it.
        for pid, line in self.spawned.items():
            kill_if_same(pid, line)


@pytest.fixture
def federation(tmp_path, flower_env):
    fed = Federation(tmp_path, flower_env)
    try:
        yield fed
    finally:
        fed.stop()


def prepare(tmp_path: Path, env: dict[str, str], world: Path, *overrides: str) -> tuple[Path, Path]:
    """``python -m fedvssl.prepare`` as the README gives it; returns the run folder and its config file."""
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "fedvssl.prepare", *DEPLOYED, *overrides]
        + [f"dataset.root={world}", f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == str(run / "fedvssl.yaml")
    return run, run / "fedvssl.yaml"


def finish(federation: Federation, run: Path, rounds: int, timeout: float = 420) -> str:
    """Wait for ``flwr run`` and the final checkpoint; returns the run's streamed log."""
    proc = federation.procs["flwr-run"]
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("flwr run did not end:\n" + federation.log("flwr-run")[-3000:])
    text = federation.log("flwr-run")
    assert proc.returncode == 0, text[-3000:]
    final = run / "checkpoints" / f"round-{rounds}.npz"
    wait_for(final.is_file, 120, f"no {final}:\n{text[-3000:]}")
    return text


def test_secured_deployment(tmp_path, flower_env, world, federation):
    """TLS and SuperNode authentication, exactly as the README's deployment section runs them."""
    run, config_path = prepare(tmp_path, flower_env, world, "partition.num_clients=2", "num_rounds=2")
    certs = tmp_path / "certs"
    made = subprocess.run(
        [sys.executable, "-m", "fedvssl.federated.certificates", "--out", str(certs), "--nodes", "4"],
        cwd=ROOT,
        env=flower_env,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    federation.superlink(
        "--ssl-ca-certfile",
        certs / "ca.crt",
        "--ssl-certfile",
        certs / "server.pem",
        "--ssl-keyfile",
        certs / "server.key",
        "--enable-supernode-auth",
    )
    federation.connection("secure", root_certificates=str(certs / "ca.crt"))
    federation.connection("no-ca")
    # node-0..2 are registered; node-3 never is.
    for k in (0, 1, 2):
        reg = federation.flwr("supernode", "register", str(certs / f"node-{k}.pub"), "secure")
        assert reg.returncode == 0 and "registered successfully" in reg.stdout, reg.stdout + reg.stderr
    # The CLI without the CA certificate cannot reach the SuperLink; with it, it can.
    assert federation.flwr("supernode", "ls", "no-ca").returncode != 0
    assert federation.flwr("supernode", "ls", "secure").returncode == 0

    ca = ("--root-certificates", certs / "ca.crt")
    intruder = federation.supernode("intruder", 1, 2, *ca, "--auth-supernode-private-key", certs / "node-3.key")
    # A registered key, but no CA certificate: only TLS verification can stop it.
    no_ca = federation.supernode("no-ca", 1, 2, "--auth-supernode-private-key", certs / "node-2.key")
    for k in (0, 1):
        federation.supernode(f"supernode{k}", k, 2, *ca, "--auth-supernode-private-key", certs / f"node-{k}.key")
    assert intruder.wait(timeout=90) != 0 and "Failed to activate SuperNode" in federation.log("intruder")
    assert no_ca.wait(timeout=90) != 0 and "CERTIFICATE_VERIFY_FAILED" in federation.log("no-ca")

    federation.run("secure", config_path)
    finish(federation, run, 2)
    federation.note_spawned()
    history = json.loads((run / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2] and all(sorted(h["partition_ids"]) == [0, 1] for h in history)
    pids = [p.pid for p in federation.procs.values() if p.poll() is None] + list(federation.spawned)
    addresses = listening_addresses(pids)
    assert f"127.0.0.1:{federation.port}" in addresses and all(is_loopback(a) for a in addresses), addresses


def test_supernode_killed_mid_round(tmp_path, flower_env, world, federation):
    """Node 2 dies while its ClientApp trains in round 2 and comes back; node 1 hangs in round 3.

    Flower notices a dead SuperNode when its heartbeats lapse (37.5 to 60 s after the last
    one) and answers for it with an error; a node that is alive but never works on its
    message keeps its heartbeats, so only runtime.round_timeout_s ends that round.
    """
    timeout_s = 30  # above a normal round of the small backbone here (round 1 must end with no failure)
    run, config_path = prepare(
        tmp_path,
        flower_env,
        world,
        "partition.num_clients=3",
        "num_rounds=3",
        "strategy.min_replies=2",
        f"runtime.round_timeout_s={timeout_s}",
    )
    federation.superlink()
    for pid in (0, 1, 2):
        federation.supernode(f"supernode{pid}", pid, 3)
    federation.connection("loopback", insecure=True)
    federation.run("loopback", config_path)
    apps: dict[str, set[int]] = {"supernode2": set()}

    def clientapps(node: str) -> set[int]:
        return {p for p in descendants(federation.procs[node].pid) if "flwr-clientapp" in (cmdline(p) or "")}

    def new_clientapp_after(node: str, done_round: int) -> int:
        """Wait for a ClientApp of ``node`` that started after round ``done_round`` was aggregated."""
        deadline = time.time() + 300
        while time.time() < deadline:
            if federation.procs["flwr-run"].poll() is not None:
                raise AssertionError(federation.log("flwr-run")[-3000:])
            running = clientapps(node)
            if not (run / "checkpoints" / f"round-{done_round}.npz").is_file():
                apps[node] |= running  # the earlier rounds' ClientApps, which may still be exiting
            elif fresh := running - apps[node]:
                return min(fresh)
            time.sleep(0.2)
        raise TimeoutError(f"round {done_round + 1} never reached {node}")

    new_clientapp_after("supernode2", 1)
    federation.note_spawned()
    federation.kill("supernode2")  # SIGKILL: no goodbye to the SuperLink, heartbeats just stop
    federation.supernode("supernode2-again", 2, 3)
    # Round 3: SuperNode 1 stays alive and keeps sending heartbeats, but its SuperExec, which
    # starts a ClientApp per message, is stopped, so the message is never worked on. (Stopping only
    # its ClientApp did not hang a round when tried: another ClientApp answered the message.)
    wait_for((run / "checkpoints" / "round-2.npz").is_file, 300, "round 2 never ended")
    federation.note_spawned()
    below = descendants(federation.procs["supernode1"].pid)
    stopped = [p for p in below if "flower-superexec" in (cmdline(p) or "") or "flwr-clientapp" in (cmdline(p) or "")]
    assert any("flower-superexec" in (cmdline(p) or "") for p in stopped), [cmdline(p) for p in below]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    text = finish(federation, run, 3)

    history = json.loads((run / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2, 3]
    first, second, third = history
    assert sorted(first["partition_ids"]) == [0, 1, 2] and first["failures"] == []
    # Round 2 ends with the replies it has, and records the dead node, whichever comes first:
    # Flower's "Node Unavailable" answer or the timeout.
    assert sorted(second["partition_ids"]) == [0, 1]
    assert [f["partition_id"] for f in second["failures"]] == [2], second["failures"]
    assert second["time_s"] < timeout_s + 15
    # The node that came back has a new node id, and it is the one sampled in round 3.
    assert sorted(third["partition_ids"]) == [0, 2]
    assert second["failures"][0]["node_id"] not in third["node_ids"]
    # Round 3 waits for the hung ClientApp no longer than the timeout, and says so.
    assert [f["partition_id"] for f in third["failures"]] == [1], third["failures"]
    assert "no reply within runtime.round_timeout_s" in third["failures"][0]["reason"]
    assert timeout_s <= third["time_s"] < timeout_s + 20  # plus the push and Flower's 3 s polling
    assert "round 3 timed out after" in text and "no reply from client(s) [1]" in text
    final = load_npz(run / "checkpoints" / "round-3.npz")
    assert len(final) == BACKBONE_KEYS and all(np.isfinite(v).all() for v in final.values())


def test_a_hostile_supernode_cannot_break_the_run(tmp_path, flower_env, world, federation):
    """One SuperNode replies a NaN in round 1 and a wrong-shaped tensor in round 2 (tests/hostile-app).

    Both replies are that client's failures, with their reasons; the run completes on the
    honest client's replies and its final model is finite.
    """
    run, config_path = prepare(tmp_path, flower_env, world, "partition.num_clients=2", "num_rounds=2")
    federation.superlink()
    federation.supernode("honest", 0, 2)
    federation.supernode("hostile", 1, 2, node_config="hostile=true")
    federation.connection("loopback", insecure=True)
    federation.run("loopback", config_path, app=ROOT / "tests" / "hostile-app")
    text = finish(federation, run, 2)
    history = json.loads((run / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2] and all(h["partition_ids"] == [0] for h in history)
    (nan,), (shape,) = (h["failures"] for h in history)
    assert nan["partition_id"] == shape["partition_id"] == 1
    assert nan["reason"].startswith("rejected: tensor backbone.") and "holds non-finite values" in nan["reason"]
    assert shape["reason"].startswith("rejected: tensor backbone.") and "has shape (3,) where" in shape["reason"]
    assert f"round 2: client 1 failed: {shape['reason']}" in text
    final = load_npz(run / "checkpoints" / "round-2.npz")
    assert len(final) == BACKBONE_KEYS and all(np.isfinite(v).all() for v in final.values())
