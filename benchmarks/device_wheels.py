"""Wheels for a GPU machine that has PyTorch but no network, in two loads of at most 60 MiB.

A lent GPU machine (benchmarks/gpu.sh) holds Python 3.12 with torch, torchvision, numpy,
pandas, matplotlib, pillow, pyyaml, tqdm, grpcio, httpx, requests, rich, click, typer
and tensorboard, and can fetch nothing. This script downloads, on a machine with pip's
index, the wheels of everything else that fedvssl and its benchmarks import, at this
project's pinned versions (constraints.txt), and puts them in two folders:

- ``.whl/a``: Flower and Ray with their dependencies. Ray's wheel (74 MB) loses the Java
  workers' jar (32 MB) and the dashboard's source maps, which Python workers never read;
- ``.whl/b``: the video stack (decord, PyAV) and Hydra.

A load is one call of the machine (whose working tree may carry 64 MiB); installed into
``/tmp/fedvssl-site``, the first load stays there while the machine is warm, so the
second call, which installs the rest and runs gpu.sh, has to follow at once. benchmarks/README.md:
"GPU check" gives the two calls.

Usage: ``python -m benchmarks.device_wheels [--python-version 3.12] [--out .whl]``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_MIB = 60  # per load; the repository itself (under 1 MiB) travels beside it

# Exact versions: constraints.txt where it pins them, else those this project is tested with.
LOADS = {
    "a": [
        "flwr==1.42.0",
        "ray==2.55.1",
        "cryptography==50.0.2",
        "cffi==2.1.1",
        "pycparser==3.12",
        "pycryptodome==3.24.1",
        "grpcio-health-checking==1.81.1",
        "protobuf==6.33.6",
        "iterators==0.0.2",
        "tomli==2.5.0",
        "tomli-w==1.2.0",
        "prompt-toolkit==3.0.53",
        "wcwidth==0.9.4",
        "sqlalchemy==2.1.9",
        "greenlet==3.5.6",
        "alembic==1.20.1",
        "mako==1.4.3",
        "uvicorn==0.49.0",
        "fastapi==0.138.2",
        "starlette==1.3.1",
        "pydantic==2.14.4",
        "pydantic-core==2.50.5",
        "annotated-types==0.8.0",
        "annotated-doc==0.0.7",
        "typing-inspection==0.4.5",
        "typing-extensions==4.16.0",
        "typer==0.20.1",
        "click==8.5.1",
        "rich==14.3.4",
        "shellingham==1.5.4",
        "packaging==25.0",
        "pathspec==1.1.1",
        "certifi==2026.10.19.post1",
        "jsonschema==4.26.0",
        "jsonschema-specifications==2025.9.1",
        "referencing==0.37.0",
        "rpds-py==2026.9.1",
        "msgpack==1.2.4",
        "cloudpickle==3.1.3",
    ],
    "b": [
        "decord==0.6.0",
        "av==18.1.0",
        "hydra-core==1.3.8",
        "omegaconf==2.3.1",
        "antlr4-python3-runtime==4.9.3",
    ],
}
# Ray's files that a Python-only local cluster never opens.
RAY_DROP = re.compile(r"^ray/jars/|^ray/dashboard/client/build/.*\.map$")


def download(requirement: str, folder: Path, python_version: str) -> None:
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64"]
    platforms += ["manylinux1_x86_64", "any"]
    args = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
    args += ["--python-version", python_version, "--implementation", "cp"]
    args += [arg for p in platforms for arg in ("--platform", p)]
    if subprocess.run([*args, requirement], capture_output=True).returncode == 0:
        return
    # A pure-Python package published only as a source archive: build its wheel here.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), requirement],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        raise SystemExit(f"device_wheels: {requirement}: no wheel for Python {python_version}\n{built.stderr[-2000:]}")
    [wheel] = folder.glob(f"{re.split('[=<>]', requirement)[0].replace('-', '_')}-*.whl") or [None]
    if wheel is None or not wheel.name.endswith("-none-any.whl"):
        raise SystemExit(f"device_wheels: {requirement}: built a wheel that is not pure Python")


def strip_ray(wheel: Path) -> None:
    """Rewrites Ray's wheel without RAY_DROP's files (and their RECORD lines)."""
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if RAY_DROP.match(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not RAY_DROP.match(line.split(",")[0])).encode()
            dst.writestr(info, data)
    slim.replace(wheel)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--out", type=Path, default=ROOT / ".whl")
    args = parser.parse_args(argv)
    for name, requirements in LOADS.items():
        folder = args.out / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            for requirement in requirements:
                download(requirement, Path(tmp), args.python_version)
            for wheel in Path(tmp).glob("*.whl"):
                shutil.move(wheel, folder / wheel.name)
        for wheel in folder.glob("ray-*.whl"):
            strip_ray(wheel)
        mib = sum(f.stat().st_size for f in folder.glob("*.whl")) / 2**20
        print(f"{folder}: {len(list(folder.glob('*.whl')))} wheels, {mib:.1f} MiB")
        if mib > LIMIT_MIB:
            raise SystemExit(f"device_wheels: {folder} holds {mib:.1f} MiB, over the {LIMIT_MIB} MiB of one load")


if __name__ == "__main__":
    main()
