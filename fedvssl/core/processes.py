"""Processes of a run: Ray processes that outlive a killed run, and memory use.

Memory: :func:`rss_mb` (a process's resident memory), :func:`object_store_mb` (the pages of
Ray's object store in it) and :func:`release_heap` (freed heap back to the OS), which the
server and the clients call after every round.

On SIGINT and SIGTERM, :func:`stop_on_signals` stops every process the run started
and exits. A SIGKILLed run cannot: its Ray processes (GCS server, raylet, dashboard, workers) keep running. So
while a simulation runs, a background thread records the PIDs of the processes the
run started (its children and theirs) with their command lines, in a registry file;
the next run stops the recorded processes of any run whose driver is gone. Only
recorded PIDs whose command line is unchanged are touched, so a reused PID is left
alone. Linux only (``/proc``); elsewhere recording and cleanup do nothing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from fedvssl.core.files import write_json

log = logging.getLogger(__name__)
PROC = Path("/proc")


def rss_mb() -> float:
    """This process's resident memory in MiB (Linux ``/proc``; elsewhere its peak, from getrusage)."""
    try:
        pages = int((PROC / "self" / "statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Freed heap a process may keep before release_heap gives it back (MiB): large enough
# that most rounds reuse their pages instead of faulting them in again, small beside a
# model-sized round (a client's peak is about 1.6 GiB at the paper's backbone).
HEAP_SLACK_MB = 256.0
_kept_from: float | None = None  # this process's own memory right after its last trim


def release_heap(slack_mb: float = HEAP_SLACK_MB) -> bool:
    """Give the freed heap back to the OS once it exceeds ``slack_mb`` (glibc's ``malloc_trim``).

    Every round frees several model-sized blocks (the replies, the aggregate, the
    serialized messages), which glibc keeps in its heaps and arenas instead of returning
    them; untrimmed, the server crept up by 18 MiB a round and a client process by 5
    (``benchmarks/rehearsal.py``). Trimming every round kept both flat but cost about
    0.7 s a round in the rehearsal, as each round then faulted its pages in anew. So the
    trim runs when the process's own memory (RSS less Ray's object-store pages) has grown
    ``slack_mb`` past what it was after the last trim: memory stays within that bound
    over any number of rounds. Returns whether it trimmed; elsewhere than glibc, nothing.
    """
    global _kept_from
    own = rss_mb() - object_store_mb()
    if _kept_from is not None and own - _kept_from < slack_mb:
        return False
    with suppress(OSError, AttributeError):  # not glibc (macOS, musl): no such function
        ctypes.CDLL(None).malloc_trim(0)
    _kept_from = rss_mb() - object_store_mb()
    return True


def object_store_mb() -> float:
    """Pages of Ray's shared-memory object store mapped into this process (``RssShmem``), in MiB; 0 off Linux.

    They count in this process's RSS and in that of every other Ray process that mapped
    them (Ray's documentation: subtract them from the RSS), and are bounded by the
    object store's size.
    """
    try:
        with open(PROC / "self" / "status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("RssShmem:")), 0.0)
    except OSError:
        return 0.0


def _parent(pid: int) -> int | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the command name may hold spaces and ")"


def cmdline(pid: int) -> str | None:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` in the process tree."""
    parents = {int(p.name): _parent(int(p.name)) for p in PROC.glob("[0-9]*")}
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _load(registry: Path) -> dict[str, dict]:
    try:
        return json.loads(registry.read_text())
    except (OSError, ValueError):
        return {}


def record_while_running(registry: Path, stop: threading.Event, every_s: float = 2.0) -> threading.Thread:
    """Start a daemon thread that keeps ``registry[<our pid>]`` = our descendants until ``stop`` is set."""
    me = str(os.getpid())

    def loop() -> None:
        while not stop.wait(every_s):
            entries = _load(registry)
            children = {str(p): c for p in descendants(os.getpid()) if (c := cmdline(p))}
            entries[me] = {"driver": cmdline(os.getpid()), "children": children}
            write_json(registry, entries)
        entries = _load(registry)
        entries.pop(me, None)  # a run that ends normally has stopped its processes itself
        write_json(registry, entries)

    thread = threading.Thread(target=loop, name="fedvssl-ray-registry", daemon=True)
    if PROC.is_dir():
        thread.start()
    return thread


def stop_leftovers(registry: Path) -> list[int]:
    """Stop the recorded processes of runs whose driver process is gone; returns their PIDs."""
    entries = _load(registry)
    stopped = []
    for driver in [d for d, e in entries.items() if cmdline(int(d)) != e.get("driver")]:
        for pid, recorded in entries.pop(driver).get("children", {}).items():
            if cmdline(int(pid)) == recorded:
                os.kill(int(pid), signal.SIGKILL)
                stopped.append(int(pid))
    if stopped:
        write_json(registry, entries)
        time.sleep(0.5)
        log.warning("stopped %d Ray processes left behind by a killed run: %s", len(stopped), stopped)
    return stopped


def stop_descendants() -> list[int]:
    """SIGKILL every process this one started, directly or not (Ray's, data loaders)."""
    pids = descendants(os.getpid())
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def freeze_descendants() -> list[int]:
    """SIGSTOP every process below this one; rescans until none is new (one may have forked meanwhile)."""
    frozen: list[int] = []
    while new := [p for p in descendants(os.getpid()) if p not in frozen]:
        for pid in new:
            with suppress(OSError):  # gone meanwhile, or not ours to signal
                os.kill(pid, signal.SIGSTOP)
        frozen += new
    return frozen


# SIGKILLs the PIDs it is given; SIGKILL also ends a stopped process.
_KILLER = "import os, sys\nfor p in sys.argv[1:]:\n    try: os.kill(int(p), 9)\n    except OSError: pass"


def exit_stopping_descendants(code: int) -> None:
    """Exit now with ``code``; every process below this one is frozen first, then killed by a helper.

    A Ray driver aborts as soon as its raylet dies, so killing its processes from here
    can be cut short half way, leaving the rest running. Frozen processes die no death
    that the driver could notice; a helper in its own session kills them once we are gone.
    """
    try:
        pids = freeze_descendants()
        try:
            subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _KILLER, *map(str, pids)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a second Ctrl-C to the terminal's group leaves it be
            )
        except OSError:
            for pid in reversed(pids):  # the deepest first, Ray's raylet and GCS last
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
    finally:
        os._exit(code)  # whatever failed above, a signalled run ends


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM stop the processes this one started, then exit (128 + signal).

    Completed rounds are on disk (atomic writes), so ``resume=true`` continues the run.
    """

    def handler(signum: int, _frame) -> None:
        # A failure handler that ran before this one may have armed an alarm that aborts the
        # process (see init_keeping_handlers): the exit below must not race it.
        signal.alarm(0)
        # The signal can land in the middle of a console write: the stream then refuses the
        # handler's own write ("reentrant call"), and the run's loop, which survives errors,
        # would carry on as if no signal had come. Nothing may stand between the signal and the exit.
        with suppress(BaseException):
            log.warning("%s: stopping the run and the processes it started", signal.Signals(signum).name)
        exit_stopping_descendants(128 + signum)

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    # ray.init replaces the SIGTERM handler with one that only raises SystemExit, after
    # which some of its processes outlive the run; keep ours in place while inside.
    try:
        import ray
        import ray._private.utils as ray_utils
    except ImportError:
        ray = ray_utils = None
    ray_setter = getattr(ray_utils, "set_sigterm_handler", None)
    ray_init = getattr(ray, "init", None)
    if ray_setter is not None:
        ray_utils.set_sigterm_handler = lambda _handler: None
    if ray_init is not None:

        def init_keeping_handlers(*args, **kwargs):
            """``ray.init``, after which this run's handlers own SIGINT and SIGTERM again.

            Ray's core worker installs a C++ failure handler (Abseil's) for SIGTERM in the
            driver: it prints a stack trace, arms a 3-second alarm that aborts the process,
            and then passes the signal on to ours. On a busy machine the freezing and the
            exit took longer than that, and the run ended by SIGABRT (or with status 1)
            instead of 128 + signal, with some of its processes still running.
            """
            try:
                return ray_init(*args, **kwargs)
            finally:
                if threading.current_thread() is threading.main_thread():
                    for sig in signals:
                        signal.signal(sig, handler)

        ray.init = init_keeping_handlers
    try:
        yield
    finally:
        if ray_setter is not None:
            ray_utils.set_sigterm_handler = ray_setter
        if ray_init is not None:
            ray.init = ray_init
        for sig, old in previous.items():
            signal.signal(sig, old)
