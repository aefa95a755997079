"""The real main job as a subprocess, for benchmarks that measure whole runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fedvssl.prepare import FLOWER_ENV

ROOT = Path(__file__).resolve().parents[1]


def python_path() -> str:
    """This checkout first, then the caller's own path (a GPU machine's carried packages, say)."""
    return os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def job_env(work: Path) -> dict[str, str]:
    """Flower's environment with a private FLWR_HOME under ``work``, and this checkout on the path."""
    return {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(work / "flwr"), "PYTHONPATH": python_path()}


def run_job(overrides: list[str], work: Path, run_dir: Path) -> tuple[list[dict], float]:
    """Run ``python -m fedvssl.main`` with ``overrides`` (which put it in ``run_dir``): its history and wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fedvssl.main", *overrides], cwd=ROOT, env=job_env(work))
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the run failed; see {run_dir / 'main.log'}")
    return json.loads((run_dir / "history.json").read_text()), wall
