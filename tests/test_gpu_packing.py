"""Clients packed onto GPUs: Ray's fractional GPUs, sized by runtime.num_gpus and num_gpus_per_client.

This machine has no GPU. Ray's resources are logical, so the simulation is told it has
two (``runtime.num_gpus=2``); Ray then places the client actors on them and gives each
its CUDA_VISIBLE_DEVICES, which the clients report. The clients themselves compute on
the CPU (``runtime.device=cpu``): only the GPU is missing, the placement is Ray's own.
"""

import json
from collections import defaultdict

import pytest
from helpers import run_main
from omegaconf import OmegaConf

from fedvssl.core.errors import ConfigError
from fedvssl.federated.backend import simulation_backend

GOOD = {
    "ray_address": None,
    "num_cpus": 16,
    "num_gpus": 1,
    "num_cpus_per_client": 3,
    "num_gpus_per_client": 0.2,
    "num_workers": 3,
    "prefetch_factor": 4,
}


def backend(**changes) -> dict:
    return simulation_backend(OmegaConf.create({**GOOD, **changes}))


def test_the_gpu_runtime_numbers_fit_a_16_core_one_gpu_machine():
    b = backend()
    assert b["client_resources"] == {"num_cpus": 3, "num_gpus": 0.2}
    assert b["init_args"]["num_cpus"] == 16 and b["init_args"]["num_gpus"] == 1
    # 15 clients at once on 3 GPUs with 45 workers fit 48 CPUs.
    assert backend(num_cpus=48, num_gpus=3)["init_args"]["num_gpus"] == 3
    gpu = OmegaConf.load("conf/runtime/gpu.yaml")
    for key in ("num_cpus_per_client", "num_gpus_per_client", "num_workers", "prefetch_factor"):
        assert gpu[key] == GOOD[key], key


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"num_gpus_per_client": 1.5}, "runtime.num_gpus_per_client=1.5 must be at most 1"),
        ({"num_gpus_per_client": -0.5}, "runtime.num_gpus_per_client=-0.5 must be a number >= 0"),
        ({"num_gpus_per_client": 2}, "runtime.num_gpus_per_client=2 is more than the run has (runtime.num_gpus=1: 1)"),
        ({"num_gpus": 0}, "runtime.num_gpus_per_client=0.2 is more than the run has (runtime.num_gpus=0: 0)"),
        ({"num_gpus": 0.5}, "runtime.num_gpus=0.5 must be an integer >= 0"),
        ({"num_cpus_per_client": 17}, "runtime.num_cpus_per_client=17 is more than the run has (runtime.num_cpus=16)"),
        # 5 clients at once (1 GPU / 0.2) with 4 workers each: 20 loader processes on 16 CPUs.
        ({"num_workers": 4}, "runtime.num_workers=4: 5 clients train at once, with 20 loader workers"),
        # 2 CPUs per client: 8 at once by CPUs, still 5 by the GPU; 5 x 4 = 20 > 16.
        ({"num_cpus_per_client": 2, "num_workers": 4}, "runtime.num_workers=4: 5 clients train at once"),
        ({"prefetch_factor": 0}, "runtime.prefetch_factor=0 must be an integer >= 1"),
        ({"num_workers": -1}, "runtime.num_workers=-1 must be an integer >= 0"),
    ],
)
def test_resources_that_do_not_fit_are_named(changes, expected):
    with pytest.raises(ConfigError) as e:
        backend(**changes)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_a_share_must_fit_on_one_gpu():
    # 0.34 fits twice on a GPU (3 x 0.34 > 1): 4 clients at once on 2 GPUs, not 5, so 4 x 4 workers fit 16 CPUs.
    assert backend(num_gpus=2, num_gpus_per_client=0.34, num_workers=4)["client_resources"]["num_gpus"] == 0.34
    with pytest.raises(ConfigError, match="6 clients train at once"):
        backend(num_gpus=2, num_gpus_per_client=0.33, num_workers=4, num_cpus_per_client=2)


def test_object_store_size_goes_to_ray_in_bytes():
    assert "object_store_memory" not in backend()["init_args"]  # null: Ray's default
    assert backend(object_store_mb=2048)["init_args"]["object_store_memory"] == 2048 * 2**20
    with pytest.raises(ConfigError, match=r"runtime.object_store_mb=50 must be an integer >= 100"):
        backend(object_store_mb=50)
    # A cluster's object store is its nodes' (ray start --object-store-memory).
    with pytest.raises(ConfigError, match="with runtime.ray_address they must stay null"):
        backend(num_cpus=None, num_gpus=None, object_store_mb=1024, ray_address="auto")


def test_fewer_gpus_let_more_workers_per_client():
    # The same 4 workers fit when the GPUs, not the CPUs, allow only 2 clients at once.
    assert backend(num_gpus_per_client=0.5, num_workers=4)["client_resources"]["num_gpus"] == 0.5


def test_bad_resources_stop_the_run_before_any_work(tmp_path, flower_env):
    data = tmp_path / "data"
    proc = run_main(
        ["runtime.num_gpus=1", "runtime.num_gpus_per_client=1.5", f"dataset.root={data}", f"hydra.run.dir={tmp_path}"],
        flower_env,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedvssl: error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "runtime.num_gpus_per_client=1.5 must be at most 1" in errors[0], errors
    assert not data.exists()


@pytest.mark.slow
def test_four_clients_share_two_gpus_two_by_two(tmp_path, flower_env, world):
    run = tmp_path / "run"
    proc = run_main(
        ["input=tiny", "model=small", "dataset.pretrain.clips_per_video=1", "num_rounds=2", "partition.num_clients=4"]
        + ["finetune=ucf101", "finetune.retrieval.num_clips=2", "runtime.eval_workers=0", "runtime.device=cpu"]
        # Ray is told of 4 CPUs (this machine has 2) so that 4 actors fit: the GPUs, not the CPUs, decide.
        + ["runtime.num_cpus=4", "runtime.num_gpus=2", "runtime.num_gpus_per_client=0.5"]
        + [f"dataset.root={world}", f"hydra.run.dir={run}"],
        flower_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((run / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2]
    processes_on = defaultdict(set)
    for h in history:
        assert sorted(h["partition_ids"]) == [0, 1, 2, 3]
        for gpu, pid in zip(h["gpu"], h["pid"], strict=True):
            processes_on[int(gpu)].add(int(pid))
    # Both GPUs are used, each by at most 2 actor processes (0.5 GPU each), 4 actors in all.
    assert sorted(processes_on) == [0, 1], dict(processes_on)
    assert all(len(pids) <= 2 for pids in processes_on.values()), dict(processes_on)
    assert len(set().union(*processes_on.values())) == 4, dict(processes_on)
