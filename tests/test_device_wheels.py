"""The wheels that take gpu.sh to a GPU machine without a network, and the path benchmarks pass on."""

import zipfile

from benchmarks.device_wheels import LIMIT_MIB, LOADS, strip_ray
from benchmarks.jobs import ROOT, job_env


def test_rays_wheel_loses_only_the_java_jar_and_the_dashboards_source_maps(tmp_path):
    kept = ["ray/__init__.py", "ray/_raylet.so", "ray/dashboard/client/build/static/js/main.js"]
    dropped = ["ray/jars/ray_dist.jar", "ray/dashboard/client/build/static/js/main.js.map"]
    wheel = tmp_path / "ray-2.55.1-cp312-cp312-manylinux2014_x86_64.whl"
    record = "".join(f"{name},sha256=x,1\n" for name in [*kept, *dropped])
    with zipfile.ZipFile(wheel, "w") as z:
        for name in [*kept, *dropped]:
            z.writestr(name, b"x" * 1000)
        z.writestr("ray-2.55.1.dist-info/RECORD", record)
    strip_ray(wheel)
    with zipfile.ZipFile(wheel) as z:
        assert z.namelist() == [*kept, "ray-2.55.1.dist-info/RECORD"]
        lines = z.read("ray-2.55.1.dist-info/RECORD").decode().splitlines()
    assert [line.split(",")[0] for line in lines] == kept


def test_the_loads_pin_what_constraints_pins():
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.lower().replace("_", "-")] = version
    carried = [r.split("==") for requirements in LOADS.values() for r in requirements]
    assert all("==" in r for requirements in LOADS.values() for r in requirements)
    shared = {name.lower(): version for name, version in carried if name.lower() in pinned}
    assert {"flwr", "ray", "decord", "av", "hydra-core", "omegaconf"} <= set(shared)
    assert shared == {name: pinned[name] for name in shared}
    assert LIMIT_MIB <= 64 - 2  # one call carries 64 MiB with the checkout (under 1 MiB)


def test_benchmark_jobs_keep_the_callers_python_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/tmp/fedvssl-site")
    assert job_env(tmp_path)["PYTHONPATH"].split(":") == [str(ROOT), "/tmp/fedvssl-site"]
    monkeypatch.delenv("PYTHONPATH")
    assert job_env(tmp_path)["PYTHONPATH"] == str(ROOT)
