"""Stopping a run's processes on a signal, when the driver aborts as soon as one of them dies."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, killing_group_after, left_in_group, process_group

# A stand-in for a Ray driver: its core worker aborts the process as soon as the raylet dies,
# here as soon as any child dies. It starts three children with a child each, then waits
# inside ``stop_on_signals`` as a run waits inside the simulation.
DRIVER = """
import os, signal, subprocess, sys, time
from fedvssl.core.processes import stop_on_signals

def abort_when_a_child_dies(*_):
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
        os.abort()

nap = "import time; time.sleep(600)"
sleeper = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {nap!r}]); time.sleep(600)"
kids = [subprocess.Popen([sys.executable, "-c", sleeper]) for _ in range(3)]
with stop_on_signals():
    signal.signal(signal.SIGCHLD, abort_when_a_child_dies)
    time.sleep(2)  # the grandchildren have started
    open(sys.argv[1], "w").close()
    time.sleep(600)
"""


def wait_until_ready(ready, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether the driver wrote its ``ready`` file within ``timeout_s`` (False if it ended first)."""
    deadline = time.time() + timeout_s
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    return ready.exists()


def test_a_signal_stops_every_process_although_the_driver_aborts_when_one_dies(tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(ready)], cwd=ROOT, start_new_session=True)
    with killing_group_after(proc.pid):
        assert wait_until_ready(ready, proc, 60)
        assert len(process_group(proc.pid)) == 7
        os.kill(proc.pid, signal.SIGTERM)
        # The handler ran to its end: it did not die half way through, by the abort.
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert not left_in_group(proc.pid, within_s=10)


# A real Ray driver inside ``stop_on_signals``, whose handler takes 5 s before it freezes
# anything, as on a machine whose cores are busy with other work.
RAY_DRIVER = """
import sys, time
import fedvssl.core.processes as processes

freeze = processes.freeze_descendants
processes.freeze_descendants = lambda: time.sleep(5) or freeze()
with processes.stop_on_signals():
    import ray

    ray.init(include_dashboard=False, num_cpus=1, logging_level="error")
    open(sys.argv[1], "w").close()
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_slow_handler_still_exits_by_the_signal_after_ray_started(tmp_path, flower_env):
    """Ray's C++ failure handler for SIGTERM aborts the driver 3 s after it ran: it must not be in the way."""
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", RAY_DRIVER, str(ready)],
        cwd=ROOT,
        env=flower_env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    with killing_group_after(proc.pid):
        started = wait_until_ready(ready, proc, 120)
        assert started, proc.stderr.read() if proc.poll() is not None else "Ray did not start"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM  # not SIGABRT (-6) from the alarm
        assert "SIGTERM received" not in proc.stderr.read()  # Ray's handler did not see the signal
        assert not left_in_group(proc.pid, within_s=30)


# A run whose console write is interrupted by the signal: CPython's stream then raises
# ``RuntimeError: reentrant call`` when the handler logs to the same stream, and the run's
# loop, which survives its errors, goes on. Here the logging raises every time.
LOUD_DRIVER = """
import logging, sys, time
from fedvssl.core.processes import stop_on_signals

class Reentrant(logging.Handler):
    def emit(self, record):
        raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

    def handleError(self, record):  # as logging's own handleError, when writing the error fails too
        raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

logging.getLogger("fedvssl").addHandler(Reentrant())
with stop_on_signals():
    open(sys.argv[1], "w").close()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            time.sleep(0.01)
        except Exception:  # a round loop that carries on after an error
            pass
sys.exit(3)  # the signal did not end the run
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_signal_ends_the_run_even_when_its_log_line_fails(tmp_path, sig):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", LOUD_DRIVER, str(ready)], cwd=ROOT, start_new_session=True)
    with killing_group_after(proc.pid):
        assert wait_until_ready(ready, proc, 60)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=30) == 128 + sig
