"""The package as a user installs it: a non-editable wheel finds its configs; imports are declared."""

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_installed_wheel_runs_from_anywhere(tmp_path):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "whl", ROOT])
    assert build.returncode == 0
    [wheel] = (tmp_path / "whl").glob("fedvssl-*.whl")
    target = tmp_path / "site"
    assert subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel]).returncode == 0
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = "import fedvssl.config.checks as c; print(c.__file__); print(c.CONF_DIR)"
    where = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.splitlines() == [str(target / "fedvssl/config/checks.py"), str(target / "fedvssl/conf")]
    job = subprocess.run(
        [sys.executable, "-m", "fedvssl.main", "--cfg", "job", "strategy.alpha=0.5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert job.returncode == 0, job.stderr
    assert "alpha: 0.5" in job.stdout and "_target_: fedvssl.ssl.speed.Speed" in job.stdout
    # Console scripts, each under the shared one-line error wrapper.
    convert = subprocess.run(
        [target / "bin" / "fedvssl-convert", tmp_path / "none.npz", tmp_path / "out.pt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert convert.returncode == 2 and convert.stderr.splitlines() == [
        f"fedvssl: error: {tmp_path / 'none.npz'}: no such checkpoint"
    ]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"fedvssl", "fedvssl-evaluate", "fedvssl-prepare", "fedvssl-cache", "fedvssl-sweep"} <= set(scripts)
    for command in scripts:
        assert (target / "bin" / command).is_file(), command


def test_every_imported_distribution_is_declared():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=;\[ ]", d)[0].lower().replace("_", "-") for d in declared}
    modules = set()
    for folder in ("fedvssl", "dataset_preparation"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    dists = packages_distributions()
    third_party = {m for m in modules if m in dists and m not in ("fedvssl", "dataset_preparation")}
    assert {"yaml", "torch", "hydra"} <= third_party  # the check sees the imports it is meant to
    undeclared = {m: dists[m] for m in third_party if not {d.lower() for d in dists[m]} & names}
    assert not undeclared, f"imported but not in pyproject dependencies: {undeclared}"
