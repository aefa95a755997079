"""The strategies beyond FedVSSL's rows in Flower's simulation on Ray: two rounds each, then a resume.

One multirun trains every new strategy for 2 rounds (``fedvssl.main -m``). The history of
the jobs in ``RESUMED`` is then cut back to round 1, as a run killed after round 2's
checkpoint and before its history is left, and the same sweep runs again: the other jobs are
skipped, and each cut one resumes after round 1 (reading the server optimiser's saved state)
and must end with the very same model.
"""

import json
import shutil

import numpy as np
import pytest
import yaml
from helpers import run_main

from fedvssl.core.files import load_npz

pytestmark = pytest.mark.slow

STRATEGIES = ["fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "ldawa", "fedavg_dp_low"]
# Resumed on Ray: one server optimiser with its state, FedProx, L-DAWA and DP. FedAvgM, FedYogi
# and FedAdagrad resume through the same ServerOptimizer state as FedAdam, bit for bit in
# tests/test_server_optimizers.py; each Ray job costs about 15 s of start-up here.
RESUMED = ["fedadam", "fedprox", "ldawa", "fedavg_dp_low"]
TINY = [
    "input=tiny",
    "model=small",  # 0.5 M parameters: the strategies' arithmetic, not R3D-18's training time, is under test
    "dataset.pretrain.clips_per_video=1",
    "partition.num_clients=3",
    "strategy.clients_per_round=2",  # sampled: DP's sampling rate 2/3, and the sampling resumes too
    "runtime.eval_workers=0",
    "finetune.datasets=[]",
]


def strategy_of(job) -> str:
    """The strategy a job ran, by what its config built (the ``_target_`` and the rule's name)."""
    cfg = yaml.safe_load((job / "fedvssl.yaml").read_text())["strategy"]
    rule = cfg.get("rule", {}).get("_target_", "").rpartition(".")[2]
    return cfg["_target_"].rpartition(".")[2] + ("/" + rule if rule else "") + ("/dp" if cfg.get("dp") else "")


def test_new_strategies_train_two_rounds_and_resume_bit_for_bit(tmp_path, flower_env, world):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "num_rounds=2", "strategy=" + ",".join(STRATEGIES), f"dataset.root={world}"]
    args.append(f"hydra.sweep.dir={sweep}")
    first = run_main(args, flower_env, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sorted((p.parent for p in sweep.glob("*/history.json")), key=lambda p: int(p.name))
    assert [strategy_of(j) for j in jobs] == [
        "ServerOptimizer/FedAvgM",
        "ServerOptimizer/FedAdam",
        "ServerOptimizer/FedYogi",
        "ServerOptimizer/FedAdagrad",
        "ServerOptimizer/FedProx",
        "LDAWA",
        "ServerOptimizer/FedAvg/dp",
    ]
    finals = {}
    for job in jobs:
        history = json.loads((job / "history.json").read_text())
        assert [h["round"] for h in history] == [1, 2] and all(len(h["partition_ids"]) == 2 for h in history)
        finals[job.name] = load_npz(job / "checkpoints" / "round-2.npz")
        assert all(np.isfinite(v).all() for v in finals[job.name].values())
    resumed_jobs = [jobs[STRATEGIES.index(name)] for name in RESUMED]
    for job in resumed_jobs:
        history = json.loads((job / "history.json").read_text())
        # Cut back to round 1: the round-2 checkpoint stays (as when killed before the history), and is redone.
        (job / "history.json").write_text(json.dumps(history[:1]))
        (job / "results.json").unlink()
        shutil.copy(job / "history.json", job / "history.cut.json")

    dp = json.loads((jobs[-1] / "history.cut.json").read_text())[0]
    assert dp["epsilon"] > 0 and dp["delta"] == 1e-5 and dp["sampling_rate"] == pytest.approx(2 / 3)
    adam_state = jobs[1] / "server-state" / "round-1.npz"
    assert adam_state.is_file() and any(k.startswith("v_t::") for k in load_npz(adam_state))

    again = run_main(args, flower_env, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    for job in jobs:
        said = "unfinished, resuming" if job in resumed_jobs else "finished before (results.json), skipped"
        assert f"{job}: {said}" in again.stdout
        history = json.loads((job / "history.json").read_text())
        assert [h["round"] for h in history] == [1, 2]
        resumed = load_npz(job / "checkpoints" / "round-2.npz")
        assert list(resumed) == list(finals[job.name])
        for k, v in resumed.items():
            np.testing.assert_array_equal(v, finals[job.name][k], err_msg=f"{strategy_of(job)}: {k}")
    log = (jobs[1] / "main.log").read_text()
    assert "resuming FedAdam with its state after round 1" in log
    dp_history = json.loads((jobs[-1] / "history.json").read_text())
    assert dp_history[1]["epsilon"] > dp_history[0]["epsilon"]


def test_fedprox_and_client_side_clipping_through_the_real_apps(tmp_path, world):
    """The run's ServerApp and ClientApps (in this process): mu reaches the clients, and they clip their updates."""
    from helpers import run_main_in_process

    args = [*TINY, "num_rounds=2", "strategy=fedprox", "+strategy/dp=client_fixed", "strategy.dp.clipping_norm=0.5"]
    args += [f"dataset.root={world}", f"data.probe_cache={tmp_path / 'cache'}"]
    run_main_in_process(args, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    for entry_ in history:
        assert entry_["proximal-mu"] == [0.01, 0.01]  # strategy.rule.proximal_mu, sent with the round
        assert all(n <= 0.5 + 1e-5 for n in entry_["client_update_norm"])  # clipped by the clients' mod
        assert entry_["clipping_norm"] == 0.5 and entry_["epsilon"] > 0
    assert history[1]["epsilon"] > history[0]["epsilon"]
