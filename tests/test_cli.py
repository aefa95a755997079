"""`python -m fedvssl.main` as a user runs it: bad input, a full run, a multirun sweep."""

import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import ROOT, TAILS, killing_group_after, left_in_group, process_group, run_main, run_module

from fedvssl.core.files import load_npz

pytestmark = pytest.mark.slow  # every test runs the main job in a subprocess, most of them on Ray

TINY = [
    "input=tiny",
    "dataset.pretrain.clips_per_video=1",
    "partition.num_clients=2",
    "finetune.retrieval.num_clips=2",
    "runtime.eval_workers=0",
]
# The tests of the run's plumbing (sweeps, broken data, failing clients, resume, signals) on the
# demo's backbone; the end-to-end run and the CtP federation keep R3D-18.
PLUMBING = [*TINY, "model=small"]


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


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset=kinetics400"], "dataset.root is required: add dataset.root=<value>"),
        (["partition=published"], "partition.dir is required: add partition.dir=<value>"),
        (["num_rounds=abc"], "num_rounds=abc must be an integer >= 1"),
        (["input.clip_len=1.5"], "input.clip_len=1.5 must be an integer >= 1"),
        (["resume=true"], "resume=true: "),
    ],
)
def test_missing_and_mistyped_values_are_one_line(tmp_path, flower_env, overrides, expected):
    data = tmp_path / "data"
    root = [] if overrides == ["dataset=kinetics400"] else [f"dataset.root={data}"]
    proc = run_main([*overrides, *root, f"hydra.run.dir={tmp_path / 'run'}"], flower_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("fedvssl: error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert not data.exists() and not (tmp_path / "run" / "fedvssl.yaml").exists()


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
    heads = sorted(str(p.relative_to(run / "clients")) for p in (run / "clients").rglob("*.pt"))
    assert heads == [
        "client-0000/round-1.pt",
        "client-0000/round-2.pt",
        "client-0001/round-1.pt",
        "client-0001/round-2.pt",
    ]
    frame = pd.read_csv(run / "history.csv")
    assert len(frame) == 4 and {"round", "partition_id", "train_loss", "weights", "accuracy"} <= set(frame.columns)
    assert (run / "history.png").stat().st_size > 10_000

    # A clean console: one line per round from this package, no library lines; main.log
    # has Flower's lines once each, without DEBUG.
    console = proc.stdout + proc.stderr
    assert [line.split(" ", 1)[1].split(":")[0] for line in console.splitlines() if ": loss " in line] == [
        "round 1",
        "round 2",
    ]
    assert "[flwr]" not in console and "Starting FedVSSL strategy" not in console and "DEBUG" not in console
    log = (run / "main.log").read_text()
    assert log.count("Starting FedVSSL strategy") == 1 and "[DEBUG]" not in log
    assert "[alembic" not in log  # import-time chatter of Flower's state database

    results = json.loads((run / "results.json").read_text())
    for name in ("ucf101", "hmdb51"):
        for scores in (results[name]["retrieval"], results[name]["random_init"]["retrieval"]):
            values = [scores[f"R@{k}"] for k in (1, 5, 10, 20, 50)]
            assert all(0.0 <= v <= 100.0 for v in values) and values == sorted(values)
        assert results[name]["queries"] > 0 and results[name]["gallery"] > 0
    assert results["run"]["rounds"] == 2
    assert (run / "results.md").read_text().count("| ucf101 |") == 2
    assert "| hmdb51 | random_init |" in proc.stdout


def test_multirun_sweep(tmp_path, flower_env, world):
    sweep = tmp_path / "multi"
    strategies = "strategy=fedvssl_a0_b0,fedvssl_a1_b1"  # alpha and beta 0, then 1
    args = ["-m", *PLUMBING, "num_rounds=1", strategies, "finetune=ucf101", f"dataset.root={world}"]
    proc = run_main([*args, f"hydra.sweep.dir={sweep}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    h0, h1 = (json.loads((sweep / str(j) / "history.json").read_text())[0] for j in (0, 1))
    np.testing.assert_allclose(h0["weights"], np.array(h0["num_examples"]) / sum(h0["num_examples"]))
    soft = np.exp(-np.array(h1["train_loss"]))
    np.testing.assert_allclose(h1["weights"], soft / soft.sum())
    for j in (0, 1):
        assert set(json.loads((sweep / str(j) / "results.json").read_text())) == {"ucf101", "run"}
    # Each job's paired gain over its own random-init control, printed when the sweep ends.
    pooled = pd.read_csv(sweep / "seeds.csv")
    for j, alpha in ((0, 0), (1, 1)):
        ucf = json.loads((sweep / str(j) / "results.json").read_text())["ucf101"]
        gain = ucf["retrieval"]["R@1"] - ucf["random_init"]["retrieval"]["R@1"]
        row = pooled[(pooled.setting.str.contains(f"fedvssl_a{alpha}_b{alpha}")) & (pooled.metric == "R@1")].iloc[0]
        assert row["min gain"] == pytest.approx(gain, abs=0.01) and row["seeds"] == 1
    assert "Over seeds" in proc.stdout and "random init" in proc.stdout

    # The sweep's summary (table, figure, CSV), made again by the report command, and the paper's table.
    summary = (sweep / "summary.md").read_text()
    assert summary.count("\n| ") >= 2 and "strategy=fedvssl_a1_b1" in summary and "ucf101 R@1" in summary
    assert (sweep / "summary.png").stat().st_size > 5000
    frame = pd.read_csv(sweep / "summary.csv")
    assert list(frame["alpha"]) == [0.0, 1.0] and list(frame["beta"]) == [0, 1]
    cmd = [sys.executable, "-m", "fedvssl.reports.sweep"]
    report = subprocess.run([*cmd, "summary", str(sweep)], cwd=ROOT, capture_output=True, text=True)
    assert report.returncode == 0 and "ucf101 R@1" in report.stdout
    paper = subprocess.run([*cmd, "paper", str(sweep)], cwd=ROOT, capture_output=True, text=True)
    assert paper.returncode == 0, paper.stderr
    row = next(line for line in paper.stdout.splitlines() if line.startswith("| FedVSSL(alpha=1 beta=1)"))
    assert "35.66" in row and "16.41" in row and "78.99" in row  # the paper's published figures
    ours = json.loads((sweep / "1" / "results.json").read_text())["ucf101"]["retrieval"]["R@1"]
    assert f"{ours:.2f}" in row

    # The same sweep again: the finished job is skipped, the unfinished one resumes.
    kept = (sweep / "0" / "results.json").read_bytes()
    (sweep / "1" / "results.json").unlink()
    again = run_main([*args, f"hydra.sweep.dir={sweep}"], flower_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{sweep / '0'}: finished before (results.json), skipped" in again.stdout
    assert f"{sweep / '1'}: unfinished, resuming" in again.stdout
    assert (sweep / "0" / "results.json").read_bytes() == kept
    assert len(json.loads((sweep / "1" / "history.json").read_text())) == 1  # no round trained twice
    assert set(json.loads((sweep / "1" / "results.json").read_text())) == {"ucf101", "run"}
    assert len(pd.read_csv(sweep / "seeds.csv").query("metric == 'R@1'")) == 2  # both jobs in the summary


def test_broken_data_is_skipped_and_reported(tmp_path, flower_env, broken_world):
    run = tmp_path / "run"
    args = [*PLUMBING, "num_rounds=1", "finetune=hmdb51", "dataset=synthetic_broken", f"dataset.root={broken_world}"]
    proc = run_main([*args, f"hydra.run.dir={run}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    unusable = json.loads((run / "unusable_videos.json").read_text())
    pretraining = [u for u in unusable if u["dataset"] == "pretraining"]
    assert sorted(u["reason"] for u in pretraining) == ["empty", "missing", "too short", "undecodable", "undecodable"]
    assert all(str(broken_world) in u["path"] for u in pretraining if u["reason"] != "missing")
    log = (run / "main.log").read_text()
    assert "skipping 5 of 64 pretraining videos" in log
    # Every skip the log reports is in the file, with its dataset and split.
    for count, what in re.findall(r"skipping (\d+) of \d+ (\w+(?: \w+)?) videos", log):
        dataset, _, split = what.partition(" ")
        listed = [u for u in unusable if u["dataset"] == dataset and u["split"] == (split or "train")]
        assert len(listed) == int(count), what
    assert any(u["dataset"] == "hmdb51" for u in unusable)
    history = json.loads((run / "history.json").read_text())
    assert sum(history[0]["num_examples"]) == 59


def test_published_partition_trains_only_on_usable_videos(tmp_path, flower_env, world):
    """A listed video that is missing is not trained on, and n_k counts only real videos.

    The run also takes bfloat16 transfer through Ray end to end: the clients reply with their
    updates, which the server adds to its float32 model."""
    from fedvssl.data import partitions as P
    from fedvssl.data.kinetics import read_kinetics_csv

    records, classes = read_kinetics_csv(world / "kinetics400/annotations/train.csv", world / "kinetics400")
    items = sorted((P.item_name(r.name), r.label + 1) for r in records)
    clients = P.split(items, "iid", 2, 7)[0]
    clients[0].append((f"{classes[0].replace(' ', '_')}/notdownloaded_000001_000011", 1))
    P.write_partition(clients, [c.replace(" ", "_") for c in classes], tmp_path / "parts", {})
    run = tmp_path / "run"
    args = [*TINY, "num_rounds=1", "finetune=ucf101", "partition=published", f"partition.dir={tmp_path / 'parts'}"]
    args += ["partition.num_clients=2", "strategy.transfer_dtype=bfloat16", "finetune.datasets=[]"]
    proc = run_main([*args, f"dataset.root={world}", f"hydra.run.dir={run}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((run / "history.json").read_text())[0]
    by_client = dict(zip(history["partition_ids"], history["num_examples"], strict=True))
    assert by_client == {0: len(clients[0]) - 1, 1: len(clients[1])}
    assert 120e6 < history["bytes_received"] < 140e6  # two R3D-18 backbones in bfloat16: 66.5 MB each
    g1 = load_npz(run / "checkpoints" / "round-1.npz")
    weights = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g1.values() if v.dtype == np.float32))
    # One round moves the model (BatchNorm statistics most) by about a quarter of its norm; replies
    # taken for weights instead of updates would move it by its whole norm.
    assert 0 < history["update_norm"] < 0.5 * weights
    [missing] = [u for u in json.loads((run / "unusable_videos.json").read_text()) if u["dataset"] == "pretraining"]
    assert missing["reason"] == "missing" and missing["name"].endswith("notdownloaded_000001_000011")


def test_too_much_broken_data_stops_before_training(tmp_path, flower_env, broken_world):
    run = tmp_path / "run"
    args = [*TINY, "dataset=synthetic_broken", f"dataset.root={broken_world}", "data.max_bad_fraction=0.04"]
    proc = run_main([*args, f"hydra.run.dir={run}"], flower_env)
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("fedvssl: error:")]
    # The first list over the limit is named with its count: 5 of the 64 pretraining videos are broken.
    assert line.startswith(f"fedvssl: error: {broken_world / 'kinetics400'}: 5 of 64 pretraining videos are unusable")
    assert not (run / "checkpoints").exists()


def test_ctp_federation(tmp_path, flower_env, world):
    """The paper's main pretext task through the whole path (16-frame clips, 32x32).

    Pretraining only (``finetune.datasets=[]``), then the evaluation command the run prints,
    as printed: it carries the run's backbone and input settings and the finetune choice."""
    run = tmp_path / "run"
    args = [
        "ssl=ctp",
        "model=paper",
        "input.clip_len=16",
        "input.crop_size=32",
        "partition.num_clients=2",
        "num_rounds=1",
        "dataset.pretrain.clips_per_video=1",  # one local epoch (the demo draws 25 clips per video)
    ]
    args += ["finetune=hmdb51", "finetune.retrieval.num_clips=1", "finetune.datasets=[]"]
    proc = run_main([*args, f"dataset.root={world}", f"hydra.run.dir={run}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [entry] = json.loads((run / "history.json").read_text())
    assert len(entry["iou"]) == 2 and all(0.0 <= v <= 1.0 for v in entry["iou"])
    checkpoint = run / "checkpoints" / "round-1.npz"
    assert len(load_npz(checkpoint)) == 120
    heads = torch.load(run / "clients" / "client-0000" / "round-1.pt", weights_only=True)
    assert list(heads) == [k for k, _ in TAILS["ctp"]]

    assert set(json.loads((run / "results.json").read_text())) == {"run"}  # nothing evaluated
    assert "Retrieval" not in proc.stdout
    [command] = [line.strip() for line in proc.stdout.splitlines() if "fedvssl.evaluate" in line]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "fedvssl.evaluate"] and f"checkpoint={checkpoint}" in argv
    assert "model=paper" in argv and "input.clip_len=16" in argv and "finetune.datasets=[]" not in argv
    later = run_module("fedvssl.evaluate", argv[3:], flower_env)
    assert later.returncode == 0, later.stderr[-3000:]
    results = json.loads((run / "evaluation" / "results.json").read_text())
    assert set(results) == {"hmdb51", "run"} and results["run"]["checkpoint"] == str(checkpoint)
    assert results["hmdb51"]["queries"] > 0 and 0 <= results["hmdb51"]["retrieval"]["R@1"] <= 100


def test_failing_clients_are_survived_or_stop_the_run(tmp_path, flower_env, world):
    base = [
        *PLUMBING,
        "partition.num_clients=3",
        "finetune.datasets=[]",  # pretraining only
        f"dataset.root={world}",
    ]
    run = tmp_path / "ok"
    # With seed 7 and rate 0.4, each of the 2 rounds loses one of the three clients.
    args = [*base, "num_rounds=2", "fault.client_failure_rate=0.4", f"hydra.run.dir={run}"]
    proc = run_main(args, flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((run / "history.json").read_text())
    failures = [f for h in history for f in h["failures"]]
    assert len(failures) == 2 and all(f["reason"].startswith("RuntimeError: injected failure") for f in failures)
    assert all(f["partition_id"] in (0, 1, 2) for f in failures)
    assert all(len(h["partition_ids"]) + len(h["failures"]) == 3 for h in history)
    first = failures[0]
    assert f"client {first['partition_id']} failed: " in (run / "main.log").read_text()

    stop = tmp_path / "stop"
    args = [*base, "num_rounds=2", "fault.client_failure_rate=1.0", f"hydra.run.dir={stop}"]
    proc = run_main(args, flower_env)
    assert proc.returncode == 1
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("fedvssl: error:")]
    assert "round 1: 0 of 3 clients replied, fewer than strategy.min_replies=1" in line


def start_until_round_one(args: list[str], run: Path, env: dict[str, str]) -> subprocess.Popen:
    """The main job in its own session (process group = its pid), returned once round 1 is saved."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedvssl.main", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (run / "history.json").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    return proc


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, flower_env, world):
    base = [*PLUMBING, "num_rounds=2", "finetune.datasets=[]", f"dataset.root={world}"]  # pretraining only
    full = tmp_path / "full"
    assert run_main([*base, f"hydra.run.dir={full}"], flower_env).returncode == 0

    cut = tmp_path / "cut"
    proc = start_until_round_one([*base, f"hydra.run.dir={cut}"], cut, flower_env)
    try:
        assert (cut / "history.json").is_file(), "round 1 never finished"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the job only: its Ray processes live on, as after the OOM killer
        proc.wait()
    assert not (cut / "checkpoints" / "round-2.npz").exists()

    try:
        assert process_group(proc.pid), "the killed job left no Ray process behind: nothing to check"
        resumed = run_main([*base, "resume=true", f"hydra.run.dir={cut}"], flower_env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert not process_group(proc.pid)  # the resumed run stopped them
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever this test started and the run did not stop
    assert "resuming after round 1 of 2" in (cut / "main.log").read_text()
    a, b = load_npz(full / "checkpoints" / "round-2.npz"), load_npz(cut / "checkpoints" / "round-2.npz")
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    h_full = json.loads((full / "history.json").read_text())
    h_cut = json.loads((cut / "history.json").read_text())
    assert [h["train_loss"] for h in h_full] == [h["train_loss"] for h in h_cut]


@pytest.mark.parametrize(
    ("sig", "to_group"),
    # `kill <pid>`; an interrupt to the job alone; Ctrl-C, which signals the whole process group
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
)
def test_a_signal_stops_the_run_and_its_ray_processes(tmp_path, flower_env, world, sig, to_group):
    args = [*PLUMBING, "num_rounds=50", "finetune=ucf101", f"dataset.root={world}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = start_until_round_one(args, tmp_path / "run", flower_env)
    with killing_group_after(proc.pid):
        assert len(process_group(proc.pid)) > 3, "Ray is not running"
        (os.killpg if to_group else os.kill)(proc.pid, sig)
        code = proc.wait(timeout=120)
        if not to_group:  # the handler ran to its end (a Ray driver aborts when its raylet dies)
            assert code == 128 + sig
        assert not left_in_group(proc.pid, within_s=30)
