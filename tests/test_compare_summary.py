"""The comparison sweep's summary: R@1 gain over random init per strategy, and R@1 against round.

A fast test checks the table's arithmetic on job folders written here (the files a sweep
leaves: results.json, history.json with the monitor's scores); a slow one runs a real
two-job sweep (two seeds, the monitor on) and reads what its summary made.
"""

import json

import numpy as np
import pytest
from helpers import run_main

from fedvssl.config.checks import CONF_DIR, validate
from fedvssl.reports.sweep import strategy_gains, write_summary

# The comparison sweep as the docs give it (27 demo runs; run again, it skips finished jobs).
COMPARE = (
    "python -m fedvssl.main -m seed=0,1,2 strategy=fedvssl_a0_b0,fedvssl,fedavgm,fedadam,fedyogi,fedprox,"
    "ldawa,fedavg_dp_low,fedavg_dp_high monitor.every=4 hydra.sweep.dir=outputs/compare"
)

# (strategy, seed) -> (pretrained UCF R@1, random-init UCF R@1, monitor R@1 after rounds 1 and 2)
JOBS = {
    ("fedadam", 0): (40.0, 20.0, [25.0, 40.0]),
    ("fedadam", 1): (30.0, 25.0, [22.0, 30.0]),
    ("ldawa", 0): (35.0, 20.0, [30.0, 35.0]),
    ("ldawa", 1): (37.5, 25.0, [31.0, 37.5]),
}


def write_jobs(folder):
    for i, ((strategy, seed), (ours, control, curve)) in enumerate(JOBS.items()):
        job = folder / str(i)
        job.mkdir(parents=True)
        results = {
            "ucf101": {"retrieval": {"R@1": ours}, "random_init": {"retrieval": {"R@1": control}}},
            "run": {"overrides": [f"seed={seed}", f"strategy={strategy}", "monitor.every=1"]},
        }
        (job / "results.json").write_text(json.dumps(results))
        history = [
            {"round": r, "monitor": {"global": {"ucf101": {"R@1": v}}, "random_init": {"ucf101": {"R@1": control}}}}
            for r, v in enumerate(curve, start=1)
        ]
        (job / "history.json").write_text(json.dumps(history))


def test_gain_per_strategy_is_paired_per_seed(tmp_path):
    write_jobs(tmp_path)
    frame, _ = write_summary(tmp_path)
    gains = strategy_gains(frame).set_index("setting")
    # fedadam: gains 20 and 5 -> mean 12.5, sample std 10.61; ldawa: 15 and 12.5 -> 13.75, 1.77.
    # Rows are named by what differs: monitor.every=1, shared by every job, is left out.
    assert gains.loc["strategy=fedadam", "ucf101 R@1 gain"] == "+12.50 ± 10.61"
    assert gains.loc["strategy=ldawa", "ucf101 R@1 gain"] == "+13.75 ± 1.77"
    assert list(gains["seeds"]) == [2, 2]
    summary = (tmp_path / "summary.md").read_text()
    assert "## R@1 gain over random init per strategy (paired per seed)" in summary
    assert "+12.50 ± 10.61" in summary and "](monitor.png)" in summary
    assert (tmp_path / "monitor.png").stat().st_size > 5000


def test_no_monitor_no_figure(tmp_path):
    write_jobs(tmp_path)
    for history in tmp_path.glob("*/history.json"):
        history.write_text(json.dumps([{"round": 1}, {"round": 2}]))
    write_summary(tmp_path)
    assert not (tmp_path / "monitor.png").exists()
    assert "monitor.png" not in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_a_two_seed_sweep_summarises_gain_and_curve(tmp_path, flower_env, world):
    sweep = tmp_path / "compare"
    args = [
        "-m",
        "seed=0,1",
        "strategy=fedadam",
        "monitor.every=1",
        "num_rounds=2",
        "input=tiny",
        "model=small",
        "model=small",
        "dataset.pretrain.clips_per_video=1",
        "partition.num_clients=2",
        "finetune=ucf101",
        "finetune.retrieval.num_clips=2",
        "runtime.eval_workers=0",
        f"dataset.root={world}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_main(args, flower_env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gains = []
    for job in ("0", "1"):
        ucf = json.loads((sweep / job / "results.json").read_text())["ucf101"]
        gains.append(ucf["retrieval"]["R@1"] - ucf["random_init"]["retrieval"]["R@1"])
        history = json.loads((sweep / job / "history.json").read_text())
        assert [h["round"] for h in history if "R@1" in h.get("monitor", {}).get("global", {}).get("ucf101", {})] == [
            1,
            2,
        ]
    summary = (sweep / "summary.md").read_text()
    expected = f"{np.mean(gains):+.2f} ± {np.std(gains, ddof=1):.2f}"
    line = next(x for x in summary.splitlines() if x.startswith("| strategy=fedadam"))
    assert expected in line and "| 2 |" in line
    assert (sweep / "monitor.png").stat().st_size > 5000


def test_the_documented_comparison_sweep_composes_and_passes_the_checks():
    """Every job of the documented line: its strategy composes, validates and builds, the monitor on."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    sweeps = dict(arg.split("=", 1) for arg in COMPARE.split()[4:-1])
    assert sweeps["seed"] == "0,1,2" and len(sweeps["strategy"].split(",")) == 9
    with initialize_config_dir(str(Path(CONF_DIR).resolve()), version_base="1.3"):
        for strategy in sweeps["strategy"].split(","):
            cfg = compose("config", ["run.dir=/tmp/run", f"strategy={strategy}", "monitor.every=4", "seed=1"])
            validate(cfg)
            built = instantiate(cfg.strategy, num_clients=cfg.partition.num_clients, seed=1, _convert_="all")
            assert cfg.strategy.share == "backbone" and built.clients_per_round == 4, strategy
            built.close()


def test_a_failed_job_is_listed_and_the_sweep_ends_with_status_1(tmp_path, monkeypatch, capsys):
    """A job's own error (a backbone whose features are not finite) costs that job: it is recorded,
    the summary lists it beside the finished jobs, and the multirun's end exits 1 naming it."""
    from omegaconf import OmegaConf

    from fedvssl import main as entry
    from fedvssl.core.errors import DataError
    from fedvssl.core.run_folder import RunFolder
    from fedvssl.reports.sweep import SweepSummary

    write_jobs(tmp_path)
    job = tmp_path / "4"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n- strategy=fedavg_dp_high\n")

    def fails(cfg):
        raise DataError("the pretrained backbone gives non-finite retrieval features (first: video v.avi)")

    monkeypatch.setattr(entry, "checked_run", fails)
    entry.sweep_job(OmegaConf.create({"run": {"dir": str(job)}}))  # returns: the sweep goes on
    assert "fedvssl: error:" in capsys.readouterr().err
    assert RunFolder(job).failure_reason().startswith("the pretrained backbone gives non-finite")

    with pytest.raises(SystemExit, match=r"1 job\(s\) of the sweep failed: 4"):
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    summary = (tmp_path / "summary.md").read_text()
    assert "## Failed jobs (1" in summary and "| 4 | seed=0 strategy=fedavg_dp_high | the pretrained" in summary
    assert "+12.50 ± 10.61" in summary  # the finished jobs are still summarised

    RunFolder(job).write_results({}, "")  # run again, it finished: no longer a failure
    assert RunFolder(job).failure_reason() is None and not (job / "failed.txt").exists()


@pytest.mark.slow
def test_a_real_multirun_goes_on_past_failing_jobs_and_exits_1(tmp_path, flower_env):
    """Hydra's own multirun: two jobs whose data folder is missing each fail with their one line;
    the second still runs, and the sweep ends with status 1 naming both, without a traceback.
    (Kinetics-400 layouts: a missing synthetic world would be generated instead.)"""
    sweep = tmp_path / "sweep"
    missing = ",".join(str(tmp_path / name) for name in ("gone-a", "gone-b"))
    args = ["-m", "dataset=kinetics400", f"dataset.root={missing}", f"hydra.sweep.dir={sweep}"]
    proc = run_main(args, flower_env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for job, name in (("0", "gone-a"), ("1", "gone-b")):
        reason = (sweep / job / "failed.txt").read_text()
        assert name in reason, reason
    assert "2 job(s) of the sweep failed: 0, 1" in proc.stderr
    assert "## Failed jobs (2" in (sweep / "summary.md").read_text()
