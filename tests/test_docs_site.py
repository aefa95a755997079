"""The docs site (mkdocs.yml, docs/) builds in strict mode, and strict mode does catch a broken link.

The build runs MkDocs from this environment (``sys.executable -m mkdocs``), in a copy of
what it reads (mkdocs.yml, docs/ and the measurements book it includes), so the checkout is
never written to. MkDocs and the Material theme come with the dev extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def site_sources(dest: Path) -> Path:
    """A copy of everything the site build reads, laid out as in the checkout."""
    dest.mkdir()
    shutil.copy2(ROOT / "mkdocs.yml", dest / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", dest / "docs")
    (dest / "benchmarks").mkdir()
    shutil.copy2(ROOT / "benchmarks" / "README.md", dest / "benchmarks" / "README.md")
    return dest


def build(root: Path, site: Path, strict_flag: bool = True) -> subprocess.CompletedProcess:
    """``mkdocs build [--strict]``; without the flag, mkdocs.yml's own ``strict: true`` has to hold."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner, not a warning of ours
    flag = ["--strict"] if strict_flag else []
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", *flag, "--site-dir", str(site)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_site_builds_in_strict_mode(tmp_path):
    root = site_sources(tmp_path / "src")
    out = build(root, tmp_path / "site")
    assert out.returncode == 0, out.stdout + out.stderr
    # Every page of the nav is there, and the measurements book is included, not just named.
    for page in ("how-it-works", "experiments", "data", "gpus-and-clusters", "federation", "extending"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    measurements = (tmp_path / "site" / "measurements" / "index.html").read_text()
    assert "Dress rehearsal" in measurements and "--8&lt;--" not in measurements


@pytest.mark.parametrize(
    ("page", "line"),
    [
        ("federation.md", "See [the missing page](no-such-page.md)."),
        ("data.md", "See [a missing section](how-it-works.md#no-such-section)."),
    ],
)
def test_a_broken_link_fails_the_strict_build(tmp_path, page, line):
    root = site_sources(tmp_path / "src")
    with open(root / "docs" / page, "a") as f:
        f.write(f"\n{line}\n")
    out = build(root, tmp_path / "site", strict_flag=False)  # what a plain `mkdocs build` does
    assert out.returncode != 0
    assert "no-such" in out.stdout + out.stderr  # the warning names the broken target


def test_a_page_left_out_of_the_nav_fails_the_strict_build(tmp_path):
    root = site_sources(tmp_path / "src")
    (root / "docs" / "orphan.md").write_text("# Orphan\n")
    out = build(root, tmp_path / "site", strict_flag=False)
    assert out.returncode != 0
    assert "orphan.md" in out.stdout + out.stderr
