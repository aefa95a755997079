"""Bounded influence (weight cap, loss clipping, update-norm bound) and Flower's robust rules inside FedVSSL."""

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord
from helpers import StaticGrid, run_main, stamp_task_identity, train_reply

from fedvssl.core.files import load_npz
from fedvssl.federated.bounds import Bounds, cap_weights, clip_losses, norm_bound
from fedvssl.federated.records import from_bf16_bits, numpy_to_record, record_to_numpy, to_bf16_bits
from fedvssl.federated.robust import FlowerRule
from fedvssl.federated.strategy import FedVSSL

ROBUST = ["fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan"]
G = {"backbone.w": np.zeros((2, 2), np.float32), "backbone.n": np.array(10, np.int64)}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    stamp_task_identity(monkeypatch)


def run_round(strategy, states, losses=None, counts=None):
    """One round: partition p replies ``states[p]`` with its loss and count; returns the new global model."""
    k = len(states)
    losses, counts = losses or [1.0] * k, counts or [10] * k
    grid = StaticGrid(list(range(101, 101 + k)))
    msgs = list(strategy.configure_train(1, numpy_to_record(G), ConfigRecord({}), grid))
    replies = []
    for m in msgs:
        p = grid.partition(m.metadata.dst_node_id)
        got = record_to_numpy(m.content["arrays"])  # the global model as sent
        replies.append(train_reply(m, states[p], losses[p], counts[p], p, strategy.transfer_dtype, got))
    new, _ = strategy.aggregate_train(1, replies)
    strategy.close()
    return record_to_numpy(new)


def fedvssl(tmp_path, k, alpha=0.0, **settings):
    return FedVSSL(alpha, 0, "backbone", k, k, seed=7, out_dir=tmp_path, **settings)


def moved(value, n=10):
    return {"backbone.w": np.full((2, 2), value, np.float32), "backbone.n": np.array(n, np.int64)}


# Bounded influence, by hand.


@pytest.mark.parametrize(
    ("weights", "cap", "expected"),
    [
        ([0.7, 0.1, 0.1, 0.1], 0.4, [0.4, 0.2, 0.2, 0.2]),  # 0.6 left, shared by three equal weights
        # 0.5 -> 0.35; 0.65 over (0.3, 0.1, 0.1) gives 0.39 > 0.35, capped in turn; 0.3 over two of 0.1.
        ([0.5, 0.3, 0.1, 0.1], 0.35, [0.35, 0.35, 0.15, 0.15]),
        ([1.0, 0.0, 0.0, 0.0], 0.3, [0.3, 0.7 / 3, 0.7 / 3, 0.7 / 3]),  # the others had no weight: equal shares
        ([0.7, 0.1, 0.1, 0.1], 0.2, [0.25] * 4),  # cap * k <= 1: no weights below the cap sum to one
        ([0.7, 0.1, 0.1, 0.1], 0.25, [0.25] * 4),
        ([0.4, 0.3, 0.3], 0.5, [0.4, 0.3, 0.3]),  # under the cap: unchanged
    ],
)
def test_the_weight_cap_by_hand(weights, cap, expected):
    w = cap_weights(weights, cap)
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    assert math.isclose(w.sum(), 1.0) and w.max() <= max(cap, 1 / len(w)) + 1e-12


def test_a_lying_loss_is_clipped_before_the_weights(tmp_path):
    """alpha 0.9: a client reporting loss 0 among three at 1.5 gets 0.564 unclipped, 0.344 clipped to [1, 3]."""
    states = [moved(v) for v in (1.0, 2.0, 3.0, 4.0)]
    losses = [1.5, 1.5, 1.5, 0.0]

    def hand(clipped):
        e = [math.exp(-x) for x in clipped]
        return [0.9 * x / sum(e) + 0.1 / 4 for x in e]

    free = fedvssl(tmp_path / "free", 4, alpha=0.9)
    run_round(free, states, losses)
    np.testing.assert_allclose(free.history[0]["weights"], hand(losses), rtol=1e-12)
    assert free.history[0]["weights"][3] == pytest.approx(0.5642, abs=1e-4)
    clipped = fedvssl(tmp_path / "clip", 4, alpha=0.9, loss_clip=[1.0, 3.0])
    new = run_round(clipped, states, losses)
    w = hand([1.5, 1.5, 1.5, 1.0])
    np.testing.assert_allclose(clipped.history[0]["weights"], w, rtol=1e-12)
    assert clipped.history[0]["train_loss"] == losses  # the history keeps what was reported
    np.testing.assert_allclose(new["backbone.w"], sum(wi * v for wi, v in zip(w, (1, 2, 3, 4), strict=True)), rtol=1e-6)
    assert clip_losses([0.0, 2.0, 9.0], [1.0, 3.0]) == [1.0, 2.0, 3.0]


def test_the_weight_cap_in_a_round(tmp_path):
    """Sample shares 0.7, 0.1, 0.1, 0.1 capped at 0.4: the aggregate is 0.4 a + 0.2 (b + c + d)."""
    strategy = fedvssl(tmp_path, 4, max_client_weight=0.4)
    new = run_round(strategy, [moved(v) for v in (8.0, 1.0, 2.0, 3.0)], counts=[70, 10, 10, 10])
    assert strategy.history[0]["weights"] == pytest.approx([0.4, 0.2, 0.2, 0.2])
    np.testing.assert_allclose(new["backbone.w"], 0.4 * 8 + 0.2 * 6, rtol=1e-6)


@pytest.mark.parametrize("transfer_dtype", ["float32", "bfloat16"])
def test_an_update_beyond_the_norm_bound_is_rejected_or_clipped(tmp_path, transfer_dtype):
    """Norms of moving 4 weights by v: 2v. Ratio 2 of the median (2, 4, 6, 200 -> 5) bounds at 10."""
    states = [moved(v) for v in (1.0, 2.0, 3.0, 100.0)]
    options = {"max_update_norm_ratio": 2.0, "transfer_dtype": transfer_dtype}
    rejecting = fedvssl(tmp_path / "reject", 4, **options)
    new = run_round(rejecting, states)
    (failure,) = rejecting.history[0]["failures"]
    assert failure["partition_id"] == 3
    assert failure["reason"].startswith("rejected: update norm 200 exceeds the bound 10")
    np.testing.assert_allclose(new["backbone.w"], 2.0, rtol=1e-6)  # mean of 1, 2, 3
    clipping = fedvssl(tmp_path / "clip", 4, update_norm_action="clip", **options)
    new = run_round(clipping, states)
    entry = clipping.history[0]
    assert entry["failures"] == [] and entry["update_norm_bound"] == pytest.approx(10.0)
    assert entry["client_update_scale"] == pytest.approx([1, 1, 1, 0.05])
    assert entry["client_update_norm"] == pytest.approx([2, 4, 6, 200])  # as sent
    np.testing.assert_allclose(new["backbone.w"], (1 + 2 + 3 + 5) / 4, rtol=1e-6)  # 100 scaled to 5
    assert new["backbone.n"] == 10  # integer tensors are not scaled
    absolute = fedvssl(tmp_path / "absolute", 4, max_update_norm=5.0)
    run_round(absolute, states)
    assert [f["partition_id"] for f in absolute.history[0]["failures"]] == [2, 3]


def test_norm_bounds_by_hand():
    assert norm_bound([1.0, 2.0, 30.0], None, None) is None
    assert norm_bound([1.0, 2.0, 30.0], 7.0, 2.0) == 4.0  # the smaller: 2 x median 2
    assert norm_bound([0.0, 0.0, 3.0], None, 2.0) is None  # a median of 0 sets no relative bound


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"max_client_weight": 0}, "strategy.max_client_weight=0 must be null or in"),
        ({"loss_clip": [2.0]}, "strategy.loss_clip=.2.0. must be null or"),
        ({"loss_clip": [3.0, 1.0]}, "lo <= hi"),
        ({"max_update_norm": -1}, "strategy.max_update_norm=-1"),
        ({"max_update_norm_ratio": 0.5}, "strategy.max_update_norm_ratio=0.5 must be null or a number >= 1"),
        ({"update_norm_action": "drop"}, "strategy.update_norm_action='drop' must be reject or clip"),
        ({"max_num_examples": 0}, "strategy.max_num_examples=0"),
    ],
)
def test_bad_bounds_name_the_key(settings, match):
    with pytest.raises(ValueError, match=match):
        Bounds(**settings)
    with pytest.raises(ValueError, match=match):  # the config check asks the strategy class
        FedVSSL.check_settings(0.9, 1, "backbone", 2, 2, **settings)


# Flower's rules, composed.


def rule_strategy(tmp_path, k, rule, **settings):
    return FlowerRule(
        rule=rule, alpha=0.0, beta=0, share="backbone", clients_per_round=k, num_clients=k, seed=7, out_dir=tmp_path,
        **settings,
    )  # fmt: skip


@pytest.mark.parametrize("k", [4, 5])
@pytest.mark.parametrize("transfer_dtype", ["float32", "bfloat16"])
def test_the_composed_median_is_numpys_median(tmp_path, k, transfer_dtype):
    rng = np.random.default_rng(k)
    states = [
        {"backbone.w": rng.normal(size=(2, 2)).astype(np.float32), "backbone.n": np.array(10 + 3 * i, np.int64)}
        for i in range(k)
    ]
    states[0]["backbone.w"][0, 0] = 1e6  # one outlier moves a mean, not a median
    rule = {"_target_": "flwr.serverapp.strategy.FedMedian"}
    new = run_round(rule_strategy(tmp_path, k, rule, transfer_dtype=transfer_dtype), states)
    sent = [s["backbone.w"] for s in states]
    if transfer_dtype == "bfloat16":  # the replies travelled as bfloat16 updates from G = 0, rounded
        sent = [from_bf16_bits(to_bf16_bits(w)) for w in sent]
    np.testing.assert_array_equal(new["backbone.w"], np.median(np.stack(sent), axis=0).astype(np.float32))
    assert new["backbone.w"].dtype == np.float32 and abs(new["backbone.w"][0, 0]) < 10
    assert new["backbone.n"].dtype == np.int64
    assert new["backbone.n"] == np.rint(np.median([10 + 3 * i for i in range(k)]))


def test_krum_picks_a_reply_of_the_honest_cluster(tmp_path):
    states = [moved(v) for v in (1.0, 1.1, 0.9, 50.0)]
    rule = {"_target_": "flwr.serverapp.strategy.Krum", "num_malicious_nodes": 1}
    strategy = rule_strategy(tmp_path, 4, rule)
    new = run_round(strategy, states)
    np.testing.assert_array_equal(new["backbone.w"], states[0]["backbone.w"])  # the one closest to the others
    assert type(strategy.rule).__name__ == "Krum" and strategy.history[0]["partition_ids"] == [0, 1, 2, 3]


def test_checked_replies_reach_the_rule_only(tmp_path):
    """A NaN reply is a failure before the rule sees it: Flower's median of a NaN would be NaN."""
    states = [moved(v) for v in (1.0, 2.0, 4.0, 0.0)]
    states[3]["backbone.w"][0, 0] = np.nan
    new = run_round(rule_strategy(tmp_path, 4, {"_target_": "flwr.serverapp.strategy.FedMedian"}), states)
    np.testing.assert_array_equal(new["backbone.w"], np.full((2, 2), 2.0, np.float32))


@pytest.mark.parametrize(
    ("rule", "settings", "match"),
    [
        ({"_target_": "flwr.serverapp.strategy.FedAdam"}, {}, "strategy.rule=FedAdam must be one of Flower's"),
        ({"_target_": "flwr.serverapp.strategy.Nope"}, {}, "strategy.rule: "),
        ({"_target_": "flwr.serverapp.strategy.FedTrimmedAvg", "beta": 0.7}, {}, r"strategy.rule: `beta` must be"),
        (
            {"_target_": "flwr.serverapp.strategy.Bulyan", "num_malicious_nodes": 1},
            {"min_replies": 3},
            r"strategy.min_replies=3 must be at least 7 for Bulyan",
        ),
    ],
)
def test_bad_rules_name_the_key(rule, settings, match):
    with pytest.raises(ValueError, match=match):
        FlowerRule.check_settings(0.0, 0, "backbone", 8, 8, rule=rule, **settings)


@pytest.mark.slow
def test_robust_strategies_run_in_the_simulation_and_resume(tmp_path, flower_env, world):
    """Each rule for 2 rounds (Ray, 3 clients); then Bulyan's job, cut back to round 1, resumes bit for bit.

    The rules keep no state of their own, so one resume stands for all: they resume through
    FedVSSL's run folder. The small backbone keeps it to the rules' plumbing (Flower's
    aggregation over the shared keys, history, checkpoints, resume), not R3D-18's training time.
    """
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        f"strategy={','.join(ROBUST)}",
        "num_rounds=2",
        "input=tiny",
        "model=small",
        "dataset.pretrain.clips_per_video=1",
        "partition.num_clients=3",
        "runtime.eval_workers=0",
        "finetune.datasets=[]",  # pretraining only
        f"dataset.root={world}",
        f"hydra.sweep.dir={sweep}",
    ]
    first = run_main(args, flower_env, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    for j, name in enumerate(ROBUST):
        run = sweep / str(j)
        assert f"strategy={name}" in (run / ".hydra" / "overrides.yaml").read_text()
        history = json.loads((run / "history.json").read_text())
        assert [h["round"] for h in history] == [1, 2], name
        assert all(sorted(h["partition_ids"]) == [0, 1, 2] and h["failures"] == [] for h in history), name
        final, before = (load_npz(run / "checkpoints" / f"round-{r}.npz") for r in (2, 1))
        assert list(final) == list(before) and all(k.startswith("backbone.") for k in final), name
        assert all(np.isfinite(v).all() for v in final.values()), name
        assert not np.array_equal(final["backbone.stem.conv.weight"], before["backbone.stem.conv.weight"]), name

    bulyan = sweep / str(ROBUST.index("bulyan"))
    uninterrupted = load_npz(bulyan / "checkpoints" / "round-2.npz")
    history = json.loads((bulyan / "history.json").read_text())
    (bulyan / "history.json").write_text(json.dumps(history[:1]))  # killed before round 2 counted
    (bulyan / "results.json").unlink()
    again = run_main(args, flower_env, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{bulyan}: unfinished, resuming" in again.stdout
    assert "resuming after round 1 of 2" in (bulyan / "main.log").read_text()
    assert [h["round"] for h in json.loads((bulyan / "history.json").read_text())] == [1, 2]
    resumed = load_npz(bulyan / "checkpoints" / "round-2.npz")
    for k, v in uninterrupted.items():
        np.testing.assert_array_equal(resumed[k], v, err_msg=k)


def test_robust_rules_are_selected_and_checked_by_config():
    from hydra import compose, initialize_config_dir

    from fedvssl.config.checks import CONF_DIR, validate
    from fedvssl.core.errors import ConfigError

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        for name in ROBUST:
            cfg = compose("config", ["run.dir=.", f"strategy={name}"])
            validate(cfg)
            assert cfg.strategy.rule._target_.startswith("flwr.serverapp.strategy.")
        adam = "strategy.rule._target_=flwr.serverapp.strategy.FedAdam"
        cfg = compose("config", ["run.dir=.", "strategy=fedmedian", adam])
    with pytest.raises(ConfigError, match="strategy.rule=FedAdam must be one of Flower's FedAvg, FedMedian"):
        validate(cfg)
