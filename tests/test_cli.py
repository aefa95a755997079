"""`python -m fedvssl.main` as a user runs it: bad input, a full run, a multirun sweep."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_main
from test_ssl import TAILS

from fedvssl.checkpoint import load_npz

TINY = ["input=tiny", "partition.num_clients=2", "finetune.retrieval.num_clips=2", "runtime.eval_workers=0"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("strategy.alpha=1.5", "strategy.alpha=1.5 must be in [0, 1]"),
        ("strategy.beta=2", "strategy.beta=2 must be 0 or 1"),
        ("strategy.clients_per_round=9", "strategy.clients_per_round=9"),
        ("finetune.datasets=[kinetics]", "finetune.datasets contains 'kinetics'"),
        ("ssl=ctp", "ssl=CtP: CtP needs input.clip_len in [9, 16] (the paper uses 16), got 8"),
    ],
)
def test_bad_values_stop_before_any_work(tmp_path, flower_env, override, expected):
    data = tmp_path / "data"
    proc = run_main([override, f"dataset.root={data}", f"hydra.run.dir={tmp_path / 'run'}"], flower_env)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedvssl: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert not data.exists()


@pytest.mark.parametrize(("override", "key"), [("strategy.alhpa=0.5", "strategy.alhpa"), ("ssl=nosuch", "ssl")])
def test_unknown_keys_and_methods_are_named(tmp_path, flower_env, override, key):
    proc = run_main([override, f"dataset.root={tmp_path / 'data'}"], flower_env)
    assert proc.returncode != 0
    assert key in proc.stderr.splitlines()[0], proc.stderr
    assert not (tmp_path / "data").exists()


def test_end_to_end_run(tmp_path, flower_env):
    """Generates the data, federates 2 clients for 2 rounds on Ray, evaluates retrieval."""
    data, run = tmp_path / "data", tmp_path / "run"
    proc = run_main([*TINY, "num_rounds=2", f"dataset.root={data}", f"hydra.run.dir={run}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (data / "synthetic.json").is_file()

    g1, g2 = (load_npz(run / "checkpoints" / f"round-{r}.npz") for r in (1, 2))
    assert len(g2) == 120 and all(k.startswith("backbone.") for k in g2)
    assert g2["backbone.stem.conv.weight"].dtype == np.float32
    assert g2["backbone.stem.bn.num_batches_tracked"].dtype == np.int64
    assert not np.array_equal(g1["backbone.stem.conv.weight"], g2["backbone.stem.conv.weight"])

    history = json.loads((run / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2]
    for h in history:
        assert sorted(h["partition_ids"]) == [0, 1]
        assert math.isclose(sum(h["weights"]), 1.0) and sum(h["num_examples"]) == 64
        assert h["bytes_received"] > 100e6 and h["time_s"] > 0
    heads = sorted(p.name for p in (run / "clients").iterdir())
    assert heads == ["client-0000.pt", "client-0001.pt"]

    results = json.loads((run / "results.json").read_text())
    for name in ("ucf101", "hmdb51"):
        for scores in (results[name]["retrieval"], results[name]["random_init"]["retrieval"]):
            values = [scores[f"R@{k}"] for k in (1, 5, 10, 20, 50)]
            assert all(0.0 <= v <= 100.0 for v in values) and values == sorted(values)
            assert values[-1] == 100.0  # 50 >= gallery size: every class is found
        assert results[name]["queries"] > 0 and results[name]["gallery"] > 0
    assert results["run"]["rounds"] == 2
    assert (run / "results.md").read_text().count("| ucf101 |") == 2
    assert "| hmdb51 | random_init |" in proc.stdout


def test_multirun_sweep(tmp_path, flower_env, world):
    sweep = tmp_path / "multi"
    args = ["-m", *TINY, "num_rounds=1", "strategy.alpha=0,1", "finetune=ucf101", f"dataset.root={world}"]
    proc = run_main([*args, f"hydra.sweep.dir={sweep}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    h0, h1 = (json.loads((sweep / str(j) / "history.json").read_text())[0] for j in (0, 1))
    np.testing.assert_allclose(h0["weights"], np.array(h0["num_examples"]) / sum(h0["num_examples"]))
    soft = np.exp(-np.array(h1["train_loss"]))
    np.testing.assert_allclose(h1["weights"], soft / soft.sum())
    for j in (0, 1):
        assert set(json.loads((sweep / str(j) / "results.json").read_text())) == {"ucf101", "run"}


def test_broken_data_is_skipped_and_reported(tmp_path, flower_env, broken_world):
    run = tmp_path / "run"
    args = [*TINY, "num_rounds=1", "finetune=hmdb51", "dataset=synthetic_broken", f"dataset.root={broken_world}"]
    proc = run_main([*args, f"hydra.run.dir={run}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    unusable = json.loads((run / "unusable_videos.json").read_text())
    assert len(unusable) == 4 and all(str(broken_world) in p for p in unusable)  # + 1 missing file
    log = (run / "main.log").read_text()
    assert "skipping 5 of 64 pretraining videos" in log
    history = json.loads((run / "history.json").read_text())
    assert sum(history[0]["num_examples"]) == 59


def test_too_much_broken_data_stops_before_training(tmp_path, flower_env, broken_world):
    run = tmp_path / "run"
    args = [*TINY, "dataset=synthetic_broken", f"dataset.root={broken_world}", "data.max_bad_fraction=0.05"]
    proc = run_main([*args, f"hydra.run.dir={run}"], flower_env)
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("fedvssl: error:")]
    # The downstream lists are screened first: UCF-101's test split is the first over the limit.
    assert line.startswith(f"fedvssl: error: {broken_world / 'ucf101'}: 3 of 32 ucf101 test videos are unusable")
    assert not (run / "checkpoints").exists()


def test_ctp_federation(tmp_path, flower_env, world):
    """The paper's main pretext task through the whole path (16-frame clips, 32x32)."""
    run = tmp_path / "run"
    args = ["ssl=ctp", "input.clip_len=16", "input.crop_size=32", "partition.num_clients=2", "num_rounds=1"]
    args += ["finetune=hmdb51", "finetune.retrieval.num_clips=1", f"dataset.root={world}", f"hydra.run.dir={run}"]
    proc = run_main(args, flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [entry] = json.loads((run / "history.json").read_text())
    assert len(entry["iou"]) == 2 and all(0.0 <= v <= 1.0 for v in entry["iou"])
    assert len(load_npz(run / "checkpoints" / "round-1.npz")) == 120
    heads = torch.load(run / "clients" / "client-0000.pt", weights_only=True)
    assert list(heads) == [k for k, _ in TAILS["ctp"]]
