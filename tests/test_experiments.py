"""The experiment presets (``+experiment=<name>``): the reference settings, and each one running.

Every preset composes, as its documented command gives it, to the reference settings in
``REFERENCE`` below: a table kept here, from the sources, not read from the presets, so that a
typo in a preset fails. Each one then runs a round and its downstream evaluation at tiny sizes
given as command-line overrides, on the small stand-in for ``/data`` that
``dataset_preparation/paper_layout.py`` generates (the ``paper_data`` fixture): the paper's main
row through ``python -m fedvssl.main`` on Ray, the others through the same ``fedvssl.main.run``
with the ClientApps in this process (``helpers.simulate_in_process``).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ROOT, run_main, run_main_in_process
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedvssl.config.checks import validate
from fedvssl.core.errors import ConfigError
from fedvssl.reports.sweep import paper_rows, paper_table

K400_NONIID = "partitions/k400_noniid"
UCF101_5CLIENTS = "partitions/ucf101_5clients"

# What the documented command adds to each preset (README, docs/experiments.md), with /data as the root.
COMMANDS = {
    "demo": [],
    "paper_k400_ctp": ["dataset.root=/data", f"partition.dir=/data/{K400_NONIID}"],
    "paper_k400_vcop": ["dataset.root=/data", f"partition.dir=/data/{K400_NONIID}"],
    "paper_k400_speed": ["dataset.root=/data", f"partition.dir=/data/{K400_NONIID}"],
    "paper_ucf101_ctp": ["dataset.root=/data", f"partition.dir=/data/{UCF101_5CLIENTS}"],
    "centralised_k400_ctp": ["dataset.root=/data"],
}

# The reference settings. Federated Kinetics-400 runs (yasar-rehman/FEDVSSL launchers and its
# history's configs; the reference notes' fedvssl-algorithm.md section 4): 100 clients of the
# published non-iid split, 5 per round, 540 rounds, 1 local epoch, batch 4 at 16x112x112 on
# R3D-18, SGD with wd 1e-4 and clip 40, fp32 computation and float32 transfer.
K400_FEDERATED = {
    "dataset.name": "kinetics400",
    "dataset.pretrain.format": "kinetics_csv",
    "dataset.pretrain.csv": "/data/kinetics400/annotations/train.csv",
    "partition.scheme": "published",
    "partition.dir": f"/data/{K400_NONIID}",
    "partition.class_index": f"/data/{K400_NONIID}/classInd.txt",
    "partition.num_clients": 100,
    "strategy.clients_per_round": 5,
    "num_rounds": 540,
}
PAPER_INPUT = {
    "dataset.pretrain.clips_per_video": 1,
    "input.clip_len": 16,
    "input.crop_size": 112,
    "train.batch_size": 4,
    "model.width": 64,
    "model.blocks": 2,
    "ssl.optimizer.weight_decay": 1.0e-4,
    "ssl.optimizer.grad_clip": 40,
    "runtime.precision.amp_dtype": "none",
    "strategy.transfer_dtype": "float32",
}
# Fine-tuning and test (microsoft/CtP configs/recognizers/_base_/runtime_ucf101.py; 32 clips per
# step: FEDVSSL history Tasks/ctp_new_st_finetune.py, 8 on each of 4 GPUs), retrieval (10 clips
# at stride 2, 171x128 then a 112 crop, R@1..50: FEDVSSL history tools/test_clip_retrieval2.py).
DOWNSTREAM = {
    "finetune.training.enabled": True,
    "finetune.training.epochs": 150,
    "finetune.training.milestones": [60, 120],
    "finetune.training.batch_size": 32,
    "finetune.training.lr": 0.01,
    "finetune.training.momentum": 0.9,
    "finetune.training.weight_decay": 5.0e-4,
    "finetune.training.grad_clip": 40,
    "finetune.training.dropout": 0.5,
    "finetune.training.stride": 2,
    "finetune.training.num_test_clips": 10,
    "finetune.training.linear_probe": False,
    "finetune.retrieval.num_clips": 10,
    "finetune.retrieval.stride": 2,
    "finetune.retrieval.resize_hw": [128, 171],
    "finetune.retrieval.ks": [1, 5, 10, 20, 50],
}
CTP = {"ssl._target_": "fedvssl.ssl.ctp.CtP", "ssl.strides": [1, 2, 3, 4, 5], "ssl.optimizer.lr": 0.01}
REFERENCE = {
    "paper_k400_ctp": {
        **K400_FEDERATED,
        **PAPER_INPUT,
        **DOWNSTREAM,
        **CTP,
        "ssl.optimizer.momentum": 0.0,  # uncertain in the sources; the preset says why 0
        "strategy._target_": "fedvssl.federated.strategy.FedVSSL",
        "strategy.alpha": 0.9,
        "strategy.beta": 1,
        "strategy.share": "backbone",
        "finetune.datasets": ["ucf101", "hmdb51"],
    },
    "paper_k400_vcop": {
        **K400_FEDERATED,
        **PAPER_INPUT,
        **DOWNSTREAM,
        "ssl._target_": "fedvssl.ssl.vcop.VCOP",
        "ssl.interval": 8,
        "ssl.optimizer.lr": 0.001,
        "ssl.optimizer.momentum": 0.0,
        "strategy.alpha": 0.0,
        "strategy.beta": 0,
        "strategy.share": "full",
        "finetune.datasets": ["ucf101", "hmdb51"],
    },
    "paper_k400_speed": {
        **K400_FEDERATED,
        **PAPER_INPUT,
        **DOWNSTREAM,
        "ssl._target_": "fedvssl.ssl.speed.Speed",
        "ssl.optimizer.lr": 0.01,
        "ssl.optimizer.momentum": 0.9,
        "ssl.dropout": 0.5,
        "ssl.flip_p": 0.5,
        "strategy.alpha": 0.0,
        "strategy.beta": 0,
        "strategy.share": "full",
        "finetune.datasets": ["ucf101", "hmdb51"],
    },
    # flwrlabs/flower baselines/fedvssl: conf/base.yaml, the UCF pretraining config, README.
    "paper_ucf101_ctp": {
        **PAPER_INPUT,
        **DOWNSTREAM,
        **CTP,
        "ssl.optimizer.momentum": 0.9,
        "dataset.name": "ucf101",
        "dataset.pretrain.format": "ucf101",
        "dataset.pretrain.split": 1,
        "dataset.pretrain.videos": "/data/ucf101",
        "partition.scheme": "published",
        "partition.dir": f"/data/{UCF101_5CLIENTS}",
        "partition.class_index": "/data/ucf101/ucfTrainTestlist/classInd.txt",
        "partition.num_clients": 5,
        "strategy.clients_per_round": 5,
        "num_rounds": 20,
        "strategy.alpha": 0.9,
        "strategy.beta": 1,
        "strategy.share": "backbone",
        "finetune.datasets": ["ucf101"],
    },
    # One client on the whole training list for about the federated runs' clips: the authors'
    # centralised epoch_27 (FEDVSSL history Tasks/centralized_retrieval_ucf.py), momentum 0.9.
    "centralised_k400_ctp": {
        **PAPER_INPUT,
        **DOWNSTREAM,
        **CTP,
        "ssl.optimizer.momentum": 0.9,
        "dataset.name": "kinetics400",
        "dataset.pretrain.csv": "/data/kinetics400/annotations/train.csv",
        "partition.scheme": "iid",
        "partition.num_clients": 1,
        "strategy.clients_per_round": 1,
        "strategy.share": "full",
        "num_rounds": 27,
        "finetune.datasets": ["ucf101", "hmdb51"],
    },
    # The CPU demo (README): Speed on the synthetic world, 4 clients, 20 rounds, FedVSSL(0.9, 1).
    "demo": {
        "dataset.name": "synthetic",
        "partition.scheme": "iid",
        "partition.num_clients": 4,
        "strategy.clients_per_round": 4,
        "num_rounds": 20,
        "ssl._target_": "fedvssl.ssl.speed.Speed",
        "strategy.alpha": 0.9,
        "strategy.beta": 1,
        "input.clip_len": 8,
        "input.crop_size": 64,
        "train.batch_size": 16,
    },
}
# Keys a preset may add that its groups do not hold: the code reads them with a default.
ADDED_KEYS = {"dataset.pretrain.clips_per_video", "dataset.pretrain.videos"}
_ABSENT = object()


def compose_preset(conf: Path, name: str, *overrides: str):
    with initialize_config_dir(str(conf), version_base="1.3"):
        return compose("config", [f"+experiment={name}", "run.dir=/tmp/run", *overrides])


def leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, dict):
            keys += leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def preset_problems(conf: Path, name: str) -> list[str]:
    """What is wrong with preset ``name`` in the config folder ``conf``, one line each (nothing: [])."""
    cfg = compose_preset(conf, name, *COMMANDS[name])
    problems = []
    try:
        validate(cfg)
    except ConfigError as e:
        problems.append(f"validate: {e}")
    for key, expected in REFERENCE[name].items():
        got = OmegaConf.select(cfg, key, default=_ABSENT)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        if got is _ABSENT or got != expected or isinstance(got, bool) != isinstance(expected, bool):
            problems.append(f"{key}={'(absent)' if got is _ABSENT else got!r}, the reference says {expected!r}")
    # A misspelt key would be added silently: each key the preset sets must exist without it.
    body = yaml.safe_load((conf / "experiment" / f"{name}.yaml").read_text())
    # "- override /dataset: kinetics400" reads as {"override /dataset": "kinetics400"}: dataset=kinetics400
    choices = [f"{k.split('/')[-1]}={v}" for entry in body.pop("defaults", []) for k, v in entry.items()]
    with initialize_config_dir(str(conf), version_base="1.3"):
        base = compose("config", ["run.dir=/tmp/run", *choices, *COMMANDS[name]])
    for key in leaf_keys(body):
        if key not in ADDED_KEYS and OmegaConf.select(base, key, default=_ABSENT) is _ABSENT:
            problems.append(f"{key} is not a key of the config it overrides")
    return problems


def test_every_preset_has_a_reference_row():
    assert sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")) == sorted(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_preset_composes_to_the_reference_settings(name):
    assert preset_problems(ROOT / "conf", name) == []


def test_a_typo_in_a_preset_fails_the_check(tmp_path):
    """The check above bites: a wrong value, a misspelt key and a wrong group are each named."""
    conf = shutil.copytree(ROOT / "conf", tmp_path / "conf")
    preset = conf / "experiment" / "paper_k400_ctp.yaml"
    text = preset.read_text()
    broken = {
        "momentum: 0.0": "momentum: 0.09",
        "  clients_per_round: 5": "  clients_per_rond: 5",
        "override /input: paper": "override /input: small",
    }
    for old, new in broken.items():
        assert old in text
        text = text.replace(old, new, 1)
    preset.write_text(text)
    problems = "\n".join(preset_problems(conf, "paper_k400_ctp"))
    assert "ssl.optimizer.momentum=0.09" in problems
    assert "strategy.clients_per_rond is not a key" in problems and "strategy.clients_per_round=100" in problems
    assert "input.clip_len=8" in problems and "train.batch_size=16" in problems


def test_the_demo_preset_is_the_defaults():
    """`make run` runs the top-level defaults; +experiment=demo writes them out and changes nothing."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        plain = compose("config", ["run.dir=/tmp/run"])
        demo = compose("config", ["run.dir=/tmp/run", "+experiment=demo"])
    assert OmegaConf.to_yaml(demo) == OmegaConf.to_yaml(plain)


@pytest.mark.parametrize("name", [n for n in sorted(REFERENCE) if n != "demo"])
def test_paper_presets_stay_fp32_on_a_gpu_unless_asked(name):
    """runtime=gpu turns bf16 autocast on; a paper preset keeps fp32 (and a float32 transfer) unless overridden."""
    gpu = compose_preset(ROOT / "conf", name, *COMMANDS[name], "runtime=gpu")
    assert gpu.runtime.precision.amp_dtype == "none" and gpu.strategy.transfer_dtype == "float32"
    assert gpu.runtime.device == "cuda" and gpu.runtime.precision.channels_last  # the rest of runtime=gpu stays
    asked = compose_preset(ROOT / "conf", name, *COMMANDS[name], "runtime=gpu", "runtime.precision.amp_dtype=bf16")
    assert asked.runtime.precision.amp_dtype == "bf16"


@pytest.mark.parametrize("name", [n for n in sorted(REFERENCE) if n != "demo"])
def test_each_preset_states_its_command_published_numbers_and_cost(name):
    text = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert f"python -m fedvssl.main +experiment={name} " + " ".join(COMMANDS[name]) in text
    assert "Cost" in text and "not measured on a GPU" in text
    published = paper_rows().query("experiment == @name")
    assert len(published) >= 1
    for column in ("ucf101_R@1", "hmdb51_R@1", "ucf101_top1", "ucf101_top5"):
        for value in published[column].dropna():
            assert f"{value:.2f}" in text, (column, value)


def test_the_sweep_line_of_the_six_rows_composes():
    """The documented -m line: the six FedVSSL strategies on top of the preset, each keeping its settings."""
    for strategy in ("fedvssl_a0_b0", "fedvssl_a1_b0", "fedvssl_a0_b1", "fedvssl_a1_b1", "fedvssl_a09_b0"):
        cfg = compose_preset(ROOT / "conf", "paper_k400_ctp", *COMMANDS["paper_k400_ctp"], f"strategy={strategy}")
        validate(cfg)
        alpha = {"a0": 0.0, "a1": 1.0, "a09": 0.9}[strategy.split("_")[1]]
        assert (cfg.strategy.alpha, cfg.strategy.beta) == (alpha, int(strategy[-1]))
        assert cfg.strategy.clients_per_round == 5 and cfg.strategy.share == "backbone" and cfg.num_rounds == 540


# -- each preset running, at tiny sizes given on the command line ------------------------------
TINY = [
    "num_rounds=1",
    "input=tiny",  # 4 frames at 32x32, 4 clips per step; the model stays R3D-18
    "finetune.retrieval.num_clips=1",
    "finetune.training.epochs=1",
    "finetune.training.num_test_clips=1",
    "runtime.eval_workers=0",
]
CTP_TINY = ["input.clip_len=9"]  # CtP's head needs 9 to 16 frames


def run_args(name: str, data: Path) -> list[str]:
    """The preset's documented command with the stand-in data, plus the tiny sizes."""
    args = [f"+experiment={name}", *(a.replace("/data", str(data)) for a in COMMANDS[name]), *TINY]
    args += CTP_TINY if "ctp" in name else []
    if name == "centralised_k400_ctp":  # one client on the whole list: the 8-video val split is enough here
        args += [f"dataset.pretrain.csv={data}/kinetics400/annotations/val.csv", "dataset.pretrain.split=val"]
    return args + [f"data.probe_cache={data.parent / 'probe-cache'}"]


def run_in_process(name: str, data: Path, run_dir: Path) -> dict:
    """``python -m fedvssl.main`` for the preset, its ClientApps in this process; the run's results."""
    return run_main_in_process(run_args(name, data), run_dir)


IN_PROCESS = ["paper_k400_vcop", "paper_k400_speed", "paper_ucf101_ctp", "centralised_k400_ctp"]
CLIENTS_PER_ROUND = {"paper_k400_vcop": 5, "paper_k400_speed": 5, "paper_ucf101_ctp": 5, "centralised_k400_ctp": 1}


@pytest.fixture(scope="module")
def preset_runs(paper_data, tmp_path_factory):
    """Each preset but the main row (run on Ray below) and the demo (the defaults, run by tests/test_cli.py)."""
    runs = tmp_path_factory.mktemp("presets")
    outcomes = {}
    for name in IN_PROCESS:
        try:
            outcomes[name] = run_in_process(name, paper_data, runs / name)
        except Exception as e:  # reported by that preset's test
            outcomes[name] = e
    return runs, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("name", IN_PROCESS)
def test_each_preset_runs_a_round_and_its_downstream_evaluation(preset_runs, name):
    runs, outcomes = preset_runs
    results = outcomes[name]
    if isinstance(results, Exception):
        raise results
    history = json.loads((runs / name / "history.json").read_text())
    assert len(history) == 1 and len(history[0]["partition_ids"]) == CLIENTS_PER_ROUND[name]
    datasets = REFERENCE[name]["finetune.datasets"]
    assert [k for k in results if k != "run"] == datasets
    for dataset in datasets:
        assert 0 <= results[dataset]["retrieval"]["R@1"] <= 100
        tuned = results[dataset]["finetune"]
        assert tuned["epochs"] == 1 and tuned["clips_per_step"] == 32 and 0 <= tuned["top1"] <= 100
    assert results["run"]["experiment"] == name
    record = results["run"]["precision"]
    assert record["amp_dtype"] == "none" and record["transfer_dtype"] == "float32" and record["device"] == "cpu"
    assert record["amp_setting"] == "none"  # pinned by the preset, whatever runtime's default
    table = (runs / name / "results.md").read_text()
    assert "Computed in fp32," in table and "transfer float32" in table


@pytest.mark.slow
def test_the_paper_table_sets_each_preset_beside_its_published_row(preset_runs):
    runs, outcomes = preset_runs
    table = paper_table(runs)
    rows = {line.split(" | ")[2]: line for line in table.splitlines() if line.startswith("| ") and " | " in line}
    ucf = outcomes["paper_ucf101_ctp"]["ucf101"]["finetune"]
    assert "66.32" in rows["paper_ucf101_ctp"] and "86.57" in rows["paper_ucf101_ctp"]
    assert f"{ucf['top1']:.2f} | 66.32 | {ucf['top5']:.2f} | 86.57" in rows["paper_ucf101_ctp"]
    central = outcomes["centralised_k400_ctp"]
    assert f"{central['ucf101']['retrieval']['R@1']:.2f} | 29.00" in rows["centralised_k400_ctp"]
    assert f"{central['hmdb51']['retrieval']['R@1']:.2f} | 11.80" in rows["centralised_k400_ctp"]
    for name in ("paper_k400_vcop", "paper_k400_speed"):  # nothing published: the paper's cells are "-"
        assert rows[name].startswith(("| VCOP FedAvg", "| Speed FedAvg")) and "| fp32 |" in rows[name]
    assert "flwrlabs/flower baselines/fedvssl README" in table and "arXiv 2207.01975" in table


@pytest.mark.slow
def test_the_main_row_runs_as_written_on_ray(paper_data, tmp_path, flower_env):
    """The documented command (as a one-job sweep) on Flower's simulation: 5 of 100 clients, then both datasets."""
    sweep = tmp_path / "sweep"
    args = ["-m", *run_args("paper_k400_ctp", paper_data), "strategy=fedvssl_a1_b1", f"hydra.sweep.dir={sweep}"]
    proc = run_main(args, flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [history] = json.loads((sweep / "0" / "history.json").read_text())
    assert len(history["partition_ids"]) == 5 and all(0 <= p < 100 for p in history["partition_ids"])
    assert history["num_examples"] == [8] * 5  # each published-style client lists 8 videos
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert results["run"]["experiment"] == "paper_k400_ctp"
    assert {k: results["run"]["precision"][k] for k in ("amp_dtype", "transfer_dtype", "device")} == {
        "amp_dtype": "none",
        "transfer_dtype": "float32",
        "device": "cpu",
    }
    for dataset in ("ucf101", "hmdb51"):
        assert results[dataset]["finetune"]["clips_per_step"] == 32 and "random_init" not in results[dataset]
    # The sweep's summary records how each job computed.
    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary["amp_dtype"]) == ["none"] and list(summary["transfer_dtype"]) == ["float32"]
    assert summary["decoder"][0] in ("decord+pyav", "pyav") and list(summary["experiment"]) == ["paper_k400_ctp"]
    paper = subprocess.run(
        [sys.executable, "-m", "fedvssl.reports.sweep", "paper", str(sweep)], cwd=ROOT, capture_output=True, text=True
    )
    assert paper.returncode == 0, paper.stderr
    [row] = [line for line in paper.stdout.splitlines() if line.startswith("| FedVSSL(alpha=1 beta=1)")]
    ours = results["ucf101"]["retrieval"]["R@1"]
    assert f"| 0 | paper_k400_ctp | fp32 | {ours:.2f} | 35.66 |" in row and "| 78.99 |" in row


# -- how each job computed, in its results and beside the paper's numbers -------------------------
def write_job(folder: Path, config: dict, run: dict, scores: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "fedvssl.yaml").write_text(yaml.safe_dump(config))
    (folder / "results.json").write_text(json.dumps({**scores, "run": run}))


def test_the_summary_and_the_paper_table_say_how_each_job_computed(tmp_path):
    """A bf16 job is shown as one beside the paper's fp32 numbers; a job from before the record, from its config."""
    from fedvssl.reports.sweep import job_rows
    from fedvssl.reports.tables import precision_record

    record = precision_record({"precision": {"amp_dtype": "bf16", "channels_last": True}, "device": "cpu"}, "bfloat16")
    assert record["amp_dtype"] == "bf16" and record["channels_last"] and record["transfer_dtype"] == "bfloat16"
    auto = precision_record({"precision": {"amp_dtype": "auto"}, "device": "cpu"}, "float32")
    assert auto["amp_setting"] == "auto" and auto["amp_dtype"] in ("bf16", "none")  # what this CPU computes in
    assert record["decoder"] in ("decord+pyav", "pyav") and record["device"] == "cpu" and record["gpu"] is None
    ctp = {"strategy": {"alpha": 0.9, "beta": 1, "share": "backbone"}, "seed": 7}
    scores = {"ucf101": {"retrieval": {"R@1": 30.5}, "finetune": {"top1": 70.25, "top5": 90.0}}}
    write_job(tmp_path / "bf16", ctp, {"experiment": "paper_k400_ctp", "precision": record}, scores)
    old = {**ctp, "runtime": {"precision": {"amp_dtype": "none"}, "decode_backend": "pyav", "device": "cuda"}}
    write_job(tmp_path / "old", {**old, "strategy": {**ctp["strategy"], "transfer_dtype": "float32"}}, {}, scores)
    fp32 = precision_record({"precision": {}, "device": "cpu"}, "float32")
    write_job(tmp_path / "ucf", ctp, {"overrides": ["+experiment=paper_ucf101_ctp"], "precision": fp32}, scores)
    frame = job_rows(tmp_path).set_index("job")
    assert frame.loc["bf16", "amp_dtype"] == "bf16" and frame.loc["bf16", "transfer_dtype"] == "bfloat16"
    assert frame.loc["old", "amp_dtype"] == "none" and frame.loc["old", "decoder"] == "pyav"
    assert frame.loc["ucf", "experiment"] == "paper_ucf101_ctp"  # read from the overrides of older results
    rows = {line.split(" | ")[1]: line for line in paper_table(tmp_path).splitlines() if line.count(" | ") > 5}
    assert "| paper_k400_ctp | bf16 autocast, bfloat16 transfer | 30.50 | 35.34 |" in rows["bf16"]
    assert "| - | fp32 | 30.50 | 35.34 |" in rows["old"]  # no preset: compared with Table 4, as before
    assert "| 70.25 | 66.32 | 90.00 | 86.57 |" in rows["ucf"] and "| 30.50 | - |" in rows["ucf"]
