import os
from pathlib import Path

import pytest
from helpers import flower_env_for

from fedvssl.prepare import FLOWER_ENV

# Flower in this process (strategies, apps) runs in the same environment as the main job.
for _key, _value in FLOWER_ENV.items():
    os.environ.setdefault(_key, _value)


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
    return flower_env_for(tmp_path)


@pytest.fixture(scope="session")
def paper_data(tmp_path_factory) -> Path:
    """Small Kinetics-400, UCF-101 and HMDB-51 layouts with both published-style partitions, once per session
    (the stand-in for ``/data``: dataset_preparation/paper_layout.py)."""
    from dataset_preparation.paper_layout import generate

    return generate(tmp_path_factory.mktemp("paper") / "data")


@pytest.fixture(scope="session")
def paper_lists(tmp_path_factory) -> Path:
    """The same stand-in for ``/data`` as ``paper_data`` (same lists and partitions) without the video files."""
    from dataset_preparation.paper_layout import PaperLayout, generate

    return generate(tmp_path_factory.mktemp("paper-lists") / "data", PaperLayout(videos=False))
