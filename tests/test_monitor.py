"""Watching a long run: TensorBoard scalars and the retrieval monitor."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, run_main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedvssl.reports.tensorboard import TensorBoardLog


def scalars(folder) -> dict[str, dict[int, float]]:
    """Every scalar TensorBoard shows for the event files in ``folder``: tag -> {step: value}."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def entry(server_round: int, loss: float) -> dict:
    """A history entry as the strategy writes it (two clients, one of them reporting a pretext accuracy)."""
    return {
        "round": server_round,
        "partition_ids": [3, 0],
        "node_ids": [11, 12],
        "num_examples": [8, 24],
        "train_loss": [loss, 2 * loss],
        "weights": [0.25, 0.75],
        "failures": [{"node_id": 13, "partition_id": 1, "reason": "RuntimeError: x"}],
        "bytes_sent": 300,
        "bytes_received": 200,
        "update_norm": 0.5,
        "client_bytes_received": [100, 100],
        "client_update_norm": [1.0, 3.0],
        "time_s": 12.0,
        "server_rss_mb": 900.0,
        "train-time": [4.0, 6.0],
        "accuracy": [0.1, 0.2],
    }


def test_tensorboard_log_writes_per_client_round_and_retrieval_scalars(tmp_path):
    log = TensorBoardLog(tmp_path / "tb")
    for r in (1, 2):
        log.log_round(entry(r, float(r)))
    log.log_monitor(2, {"global": {"ucf101": {"R@1": 25.0}}, "random_init": {"ucf101": {"R@1": 12.5}}, "time_s": 3.5})
    log.close()
    found = scalars(tmp_path / "tb")
    assert found["train_loss/client-0003"] == {1: 1.0, 2: 2.0} and found["train_loss/client-0000"] == {1: 2.0, 2: 4.0}
    for tag, value in [
        ("weights/client-0000", 0.75),
        ("num_examples/client-0003", 8),
        ("update_norm/client-0000", 3.0),
        ("bytes_received/client-0003", 100),
        ("train_time/client-0000", 6.0),
        ("accuracy/client-0003", 0.1),
        ("round/train_loss", 0.25 * 2 + 0.75 * 4),
        ("round/time_s", 12.0),
        ("round/bytes_sent", 300),
        ("round/update_norm", 0.5),
        ("round/failures", 1),
        ("round/clients", 2),
    ]:
        assert found[tag][2] == pytest.approx(value), tag
    assert not any(t.startswith(("partition_ids", "node_ids", "failures/")) for t in found)
    assert found["retrieval/ucf101/R@1"] == {2: 25.0} and found["retrieval/time_s"] == {2: 3.5}
    assert not any(t.startswith("privacy/") for t in found)  # no DP, no privacy charts
    # The control is its own TensorBoard run with the same tag, so both share one chart.
    assert scalars(tmp_path / "tb" / "random_init") == {"retrieval/ucf101/R@1": {2: 12.5}}
    # Each failure's reason is text at its round (the TEXT tab).
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("round/failures/text_summary")}
    assert texts == {1: "client 1: RuntimeError: x", 2: "client 1: RuntimeError: x"}


def test_a_dp_runs_privacy_spent_is_charted_per_round(tmp_path):
    """The (epsilon, delta) a DP run's history records after each round, as TensorBoard scalars."""
    log = TensorBoardLog(tmp_path / "tb")
    spent = {1: 3.25, 2: 4.5}
    for r, eps in spent.items():
        dp = {"epsilon": eps, "delta": 1e-5, "noise_multiplier": 0.8, "clipping_norm": 2.0, "sampling_rate": 0.5}
        log.log_round({**entry(r, 1.0), **dp, "accounting": "rdp"})
    log.close()
    found = scalars(tmp_path / "tb")
    assert found["privacy/epsilon"] == pytest.approx(spent)
    assert found["privacy/delta"][2] == pytest.approx(1e-5) and found["privacy/sampling_rate"][1] == 0.5
    assert found["privacy/noise_multiplier"][1] == pytest.approx(0.8) and found["privacy/clipping_norm"][2] == 2.0


def test_a_resumed_run_replaces_the_rounds_it_redoes(tmp_path):
    """Killed after round 3 was logged but before it completed: the resumed run's rounds 2-3 win."""
    first = TensorBoardLog(tmp_path)
    for r in (1, 2, 3):
        first.log_round(entry(r, float(r)))
    first.close()
    resumed = TensorBoardLog(tmp_path, start_round=1)
    resumed.log_round(entry(2, 20.0))
    resumed.close()
    assert scalars(tmp_path)["train_loss/client-0003"] == {1: 1.0, 2: 20.0}


def test_nothing_imports_tensorboard_or_the_monitor_when_both_are_off(tmp_path):
    code = f"""
import sys
from hydra import compose, initialize_config_dir
from fedvssl.federated.server_app import observers
with initialize_config_dir({str(ROOT / "conf")!r}, version_base="1.3"):
    cfg = compose("config", ["run.dir={tmp_path}"])
assert observers(cfg, 0) == {{}}
print(sorted(m for m in sys.modules if "tensorboard" in m or m == "fedvssl.downstream.monitor"))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def compose_tiny(world, tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "config",
            [
                "input=tiny",
                "dataset.pretrain.clips_per_video=1",
                "finetune=ucf101",
                "runtime.eval_workers=0",
                f"dataset.root={world}",
                f"data.probe_cache={tmp_path / 'cache'}",
                f"run.dir={tmp_path / 'run'}",
                *overrides,
            ],
        )


@pytest.mark.slow  # two retrievals over real videos: about 35 s on 2 cores
def test_the_monitor_scores_the_given_state_and_the_control_once(world, tmp_path, monkeypatch):
    import fedvssl.downstream.monitor as monitor_module
    from fedvssl.config.settings import evaluation_settings
    from fedvssl.downstream.monitor import RetrievalMonitor
    from fedvssl.models.r3d import seeded_backbone

    settings = evaluation_settings(compose_tiny(world, tmp_path))
    evaluated = []
    real = monitor_module.evaluate_states

    def spy(s, states):
        evaluated.append((s.retrieval.num_clips, s.finetune.enabled, list(states)))
        return real(s, states)

    monkeypatch.setattr(monitor_module, "evaluate_states", spy)
    monitor = RetrievalMonitor(settings, every=5, clips_per_video=1, datasets=["ucf101"])
    random_init = {
        k: v.numpy() for k, v in seeded_backbone(None, settings.seed, settings.backbone).state_dict().items()
    }
    first = monitor(random_init)
    # The seeded random-init state, scored as "the global model", is the control itself.
    assert first["global"] == first["random_init"] and set(first["global"]["ucf101"]) == {
        f"R@{k}" for k in (1, 5, 10, 20, 50)
    }
    second = monitor({k: v * 0.5 if v.dtype == np.float32 else v for k, v in random_init.items()})
    assert second["random_init"] == first["random_init"]
    assert evaluated == [(1, False, ["global", "random_init"]), (1, False, ["global"])]
    assert re.fullmatch(
        r"retrieval monitor \(1 clip/video\): ucf101 R@1 [\d.]+ R@5 [\d.]+ \(random init [\d.]+ [\d.]+\)",
        monitor.summary(second),
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["monitor.every=-1"], "monitor.every=-1 must be an integer >= 0"),
        (["monitor.every=2", "monitor.clips_per_video=0"], "monitor.clips_per_video=0 must be an integer >= 1"),
        (
            ["monitor.every=2", "monitor.datasets=[hmdb51]"],
            "monitor.datasets=['hmdb51'] must be a non-empty subset of finetune.datasets=['ucf101']",
        ),
    ],
)
def test_bad_monitor_values_name_the_key(tmp_path, overrides, expected):
    from fedvssl.config.checks import validate
    from fedvssl.core.errors import ConfigError

    cfg = compose_tiny(tmp_path / "none", tmp_path, *overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert str(error.value).startswith(expected)


@pytest.mark.slow
def test_a_run_with_the_monitor_and_tensorboard(tmp_path, flower_env, world):
    """2 clients, 2 rounds on Ray, the monitor after every round with 1 clip per video."""
    run = tmp_path / "run"
    args = [
        "input=tiny",
        "model=small",
        "dataset.pretrain.clips_per_video=1",
        "partition.num_clients=2",
        "runtime.eval_workers=0",
        "num_rounds=2",
        "finetune=ucf101",
    ]
    # One clip per video in the final evaluation too: at round 2 it must agree with the monitor.
    args += ["finetune.retrieval.num_clips=1", "monitor.every=1", "monitor.clips_per_video=1", "logger=tensorboard"]
    proc = run_main([*args, f"dataset.root={world}", f"hydra.run.dir={run}"], flower_env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    lines = [line for line in proc.stdout.splitlines() if "retrieval monitor" in line]
    assert len(lines) == 2 and " round 1: " in lines[0] and " round 2: " in lines[1], proc.stdout[-3000:]
    history = json.loads((run / "history.json").read_text())
    monitored = [h["monitor"] for h in history]
    for m in monitored:
        assert set(m) == {"global", "random_init", "time_s"} and list(m["global"]) == ["ucf101"]
    results = json.loads((run / "results.json").read_text())
    # The same model, clips and protocol as the final evaluation of the round-2 checkpoint.
    assert monitored[1]["global"]["ucf101"] == results["ucf101"]["retrieval"]
    assert monitored[1]["random_init"]["ucf101"] == results["ucf101"]["random_init"]["retrieval"]

    found = scalars(run / "tensorboard")
    for metric in ("train_loss", "weights", "num_examples", "update_norm", "bytes_received", "train_time"):
        for client in (0, 1):
            assert set(found[f"{metric}/client-{client:04d}"]) == {1, 2}, metric
    for h in history:
        for pid, loss, norm in zip(h["partition_ids"], h["train_loss"], h["client_update_norm"], strict=True):
            assert found[f"train_loss/client-{pid:04d}"][h["round"]] == pytest.approx(loss)
            assert found[f"update_norm/client-{pid:04d}"][h["round"]] == pytest.approx(norm) and norm > 0
        assert found["round/time_s"][h["round"]] == pytest.approx(h["time_s"])
    for k in (1, 5, 10):
        tag = f"retrieval/ucf101/R@{k}"
        assert found[tag] == {r: pytest.approx(monitored[r - 1]["global"]["ucf101"][f"R@{k}"]) for r in (1, 2)}
        control = scalars(run / "tensorboard" / "random_init")[tag]
        assert control == {r: pytest.approx(results["ucf101"]["random_init"]["retrieval"][f"R@{k}"]) for r in (1, 2)}
