import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import flower_env_for

from fedvssl.prepare import FLOWER_ENV

# Flower in this process (strategies, apps) runs in the same environment as the main job.
for _key, _value in FLOWER_ENV.items():
    os.environ.setdefault(_key, _value)


def shared(tmp_path_factory, name: str, make: Callable[[Path], Path]) -> Path:
    """``make(folder)`` once per test session, also when pytest-xdist splits the session over
    workers (``make test-fast``): the first worker to ask makes it under a lock, the others
    wait and reuse it. The generated layouts are read-only to the tests, so sharing is safe."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    folder = tmp_path_factory.getbasetemp().parent / name  # the session's, above each worker's own
    folder.mkdir(exist_ok=True)
    done = folder / "made-at"
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            done.write_text(str(make(folder)))
        return Path(done.read_text())


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The default synthetic world, generated once per test session."""
    from dataset_preparation.synthetic import generate

    return shared(tmp_path_factory, "world", lambda folder: generate(folder / "synthetic"))


@pytest.fixture(scope="session")
def broken_world(tmp_path_factory) -> Path:
    """Flat Kinetics folders and a few damaged files per dataset."""
    from dataset_preparation.synthetic import WorldSpec, generate

    spec = WorldSpec(kinetics_flat=True, broken=True)
    return shared(tmp_path_factory, "broken", lambda folder: generate(folder / "synthetic", spec))


@pytest.fixture
def flower_env(tmp_path) -> dict[str, str]:
    """Environment for a subprocess that runs Flower: private FLWR_HOME, no telemetry."""
    return flower_env_for(tmp_path)


@pytest.fixture(scope="session")
def paper_data(tmp_path_factory) -> Path:
    """Small Kinetics-400, UCF-101 and HMDB-51 layouts with both published-style partitions, once per session
    (the stand-in for ``/data``: dataset_preparation/paper_layout.py)."""
    from dataset_preparation.paper_layout import generate

    return shared(tmp_path_factory, "paper", lambda folder: generate(folder / "data"))


@pytest.fixture(scope="session")
def paper_lists(tmp_path_factory) -> Path:
    """The same stand-in for ``/data`` as ``paper_data`` (same lists and partitions) without the video files."""
    from dataset_preparation.paper_layout import PaperLayout, generate

    return shared(tmp_path_factory, "paper-lists", lambda folder: generate(folder / "data", PaperLayout(videos=False)))
