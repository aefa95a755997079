"""Pooling a multirun over seeds: mean ± std of pretrained and random init, and the paired gain."""

import json

import numpy as np
import pandas as pd
import pytest

from fedvssl.reports.sweep import job_rows, over_seeds, write_summary


def write_job(folder, overrides, seed, ours, control, clients=4):
    folder.mkdir(parents=True)
    entry = {"retrieval": {"R@1": ours, "R@5": ours + 10, "R@10": ours + 20}}
    entry["random_init"] = {"retrieval": {"R@1": control, "R@5": control + 10, "R@10": control + 20}}
    results = {"ucf101": entry, "run": {"overrides": overrides}}
    (folder / "results.json").write_text(json.dumps(results))
    config = f"seed: {seed}\npartition:\n  num_clients: {clients}\nstrategy:\n  alpha: 0.9\n"
    (folder / "fedvssl.yaml").write_text(config)


def test_jobs_that_differ_only_in_seed_are_pooled(tmp_path):
    rng = np.random.default_rng(0)
    ours, control = rng.uniform(10, 60, size=3), rng.uniform(10, 60, size=3)
    for i in range(3):
        write_job(tmp_path / str(i), [f"seed={i}"], i, ours[i], control[i])
        write_job(tmp_path / str(3 + i), [f"seed={i}", "partition.num_clients=1"], i, 50.0 + i, 50.0, clients=1)
    frame = job_rows(tmp_path)
    assert list(frame["seed"]) == [0, 1, 2, 0, 1, 2] and list(frame["clients"]) == [4, 4, 4, 1, 1, 1]
    pooled = over_seeds(frame)
    assert set(pooled.setting) == {"(defaults)", "partition.num_clients=1"}
    row = pooled[(pooled.setting == "(defaults)") & (pooled.metric == "R@1")].iloc[0]
    assert row["seeds"] == 3 and row["dataset"] == "ucf101"
    gain = ours - control
    assert row["pretrained"] == f"{ours.mean():.2f} ± {ours.std(ddof=1):.2f}"
    assert row["random init"] == f"{control.mean():.2f} ± {control.std(ddof=1):.2f}"
    assert row["gain"] == f"{gain.mean():+.2f} ± {gain.std(ddof=1):.2f}"
    assert row["min gain"] == pytest.approx(gain.min(), abs=0.01)
    central = pooled[(pooled.setting == "partition.num_clients=1") & (pooled.metric == "R@10")].iloc[0]
    assert central["gain"] == "+1.00 ± 1.00" and central["min gain"] == 0.0

    write_summary(tmp_path)
    assert "Over seeds" in (tmp_path / "summary.md").read_text()
    assert len(pd.read_csv(tmp_path / "seeds.csv")) == 2 * 3  # two settings x R@1/5/10


def test_a_sweep_of_pretraining_only_jobs_is_summarised_without_scores(tmp_path):
    """Jobs run with finetune.datasets=[] hold no downstream entry: listed, nothing pooled or drawn."""
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps({"run": {"overrides": [f"seed={i}"]}}))
        (tmp_path / str(i) / "fedvssl.yaml").write_text(f"seed: {i}\nstrategy:\n  alpha: 0.9\n")
    frame, pooled = write_summary(tmp_path)
    assert list(frame["seed"]) == [0, 1] and pooled.empty
    assert "| 0 | seed=0 |" in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "summary.png").exists()
