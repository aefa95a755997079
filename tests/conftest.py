import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The default synthetic world, generated once per test session."""
    from dataset_preparation.synthetic import generate

    return generate(tmp_path_factory.mktemp("world") / "synthetic")


@pytest.fixture(scope="session")
def broken_world(tmp_path_factory) -> Path:
    """Flat Kinetics folders and a few damaged files per dataset."""
    from dataset_preparation.synthetic import WorldSpec, generate

    return generate(tmp_path_factory.mktemp("broken") / "synthetic", WorldSpec(kinetics_flat=True, broken=True))


@pytest.fixture
def flower_env(tmp_path) -> dict[str, str]:
    """Environment for a subprocess that runs Flower: private FLWR_HOME, no telemetry."""
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(tmp_path / "flwr"), "PYTHONUNBUFFERED": "1"}
    env["FEDVSSL_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = str(ROOT)
    return env


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
