"""Helpers for tests that start servers on 127.0.0.1 and stop what they started by PID."""

import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from fedvssl.core.processes import cmdline

_GIVEN: set[int] = set()  # ports this test session has handed out already


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (Linux: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port free on 127.0.0.1 for a server a test starts, below the ephemeral range.

    A port from ``bind(0)`` lies in the ephemeral range, from which every outgoing connection
    (gRPC clients, the SuperNodes' own) takes its local port: one did take it between the
    check and the server's bind (``address already in use``, once in a CI run). Below that
    range only servers bind (from 20000: `ray start` gives its workers 10002-19999), and the
    session never hands out a port twice.
    """
    low = _ephemeral_low()
    for _ in range(500):
        port = random.randrange(20000, low) if low > 21000 else 0
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port on 127.0.0.1 below the ephemeral range")


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def listening_addresses(pids: list[int]) -> set[str]:
    """The local addresses (``ip:port``) on which processes ``pids`` listen for TCP connections."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc/net stores each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, width // 2, 4))
            found.add(f"{socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw)}:{int(port, 16)}")
    return found


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1")


def kill_if_same(pid: int, line: str | None) -> None:
    """SIGKILL ``pid`` only if it still runs the same command (a reused PID is left alone)."""
    if line is not None and cmdline(pid) == line:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
