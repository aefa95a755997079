"""Flower's server optimisers, FedProx, central DP and L-DAWA inside FedVSSL's round.

The strategies run through Flower messages here (a static grid, replies made by hand); the
simulation on Ray runs them in ``test_strategy_sweep.py``.
"""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam
from helpers import StaticGrid, stamp_task_identity, train_reply

from fedvssl.core.run_folder import RunFolder
from fedvssl.federated import privacy
from fedvssl.federated.ldawa import LDAWA, ldawa_aggregate
from fedvssl.federated.optimizers import ServerOptimizer, state_path
from fedvssl.federated.records import numpy_to_record, record_to_numpy

RULES = {
    "fedavgm": {"_target_": "flwr.serverapp.strategy.FedAvgM", "server_learning_rate": 0.1, "server_momentum": 0.9},
    "fedadam": {"_target_": "flwr.serverapp.strategy.FedAdam", "eta": 0.01},
    "fedyogi": {"_target_": "flwr.serverapp.strategy.FedYogi", "eta": 0.01},
    "fedadagrad": {"_target_": "flwr.serverapp.strategy.FedAdagrad", "eta": 0.01},
}
DP = {
    "_target_": "flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping",
    "noise_multiplier": 0.5,
    "clipping_norm": 2.0,
    "num_sampled_clients": 3,
    "delta": 1e-5,
}
G0 = {
    "backbone.w": np.linspace(-1, 1, 600, dtype=np.float32).reshape(20, 30),
    "backbone.b": np.zeros(30, np.float32),
    "backbone.n": np.array(10, np.int64),
}
NODES = [101, 102, 103, 104]


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    stamp_task_identity(monkeypatch)


def make(out_dir, rule=None, dp=None, k=3, alpha=0.0, cls=ServerOptimizer, **kwargs):
    settings = {"alpha": alpha, "beta": 0, "share": "backbone", "clients_per_round": k, "num_clients": len(NODES)}
    if cls is ServerOptimizer:
        kwargs.update(rule=rule or {"_target_": "flwr.serverapp.strategy.FedAvg"}, dp=dp)
    return cls(seed=7, out_dir=str(out_dir), **settings, **kwargs)


def client_model(received: dict, server_round: int, pid: int) -> dict:
    """A client's trained model: the global one moved by a reproducible step; its counter advanced."""
    rng = np.random.default_rng((server_round, pid))
    return {
        k: v + rng.normal(scale=0.05 * (pid + 1), size=v.shape).astype(np.float32) if v.dtype == np.float32 else v + 5
        for k, v in received.items()
    }


def run_rounds(strategy, arrays, rounds, grid=None):
    """Flower's loop over ``rounds`` (the strategy's own numbering, 1 on), clients replying by ``client_model``."""
    grid = grid or StaticGrid(NODES)
    for rnd in rounds:
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), grid))
        received = record_to_numpy(messages[0].content["arrays"])
        absolute = messages[0].content["config"]["server-round"]
        replies = []
        for m in messages:
            pid = grid.partition(m.metadata.dst_node_id)
            replies.append(train_reply(m, client_model(received, absolute, pid), 1.0 + pid, 10 + pid, pid))
        arrays, _ = strategy.aggregate_train(rnd, replies)
    strategy.close()
    return arrays


def moments(strategy) -> dict:
    rule = strategy.rule
    out = {"clipping_norm": np.array(strategy.dp.clipping_norm)} if strategy.dp is not None else {}
    out.update({f"m_t/{k}": v for k, v in (getattr(rule, "m_t", None) or {}).items()})
    out.update({f"v_t/{k}": v for k, v in (getattr(rule, "v_t", None) or {}).items()})
    out.update({f"momentum/{i}": v for i, v in enumerate(getattr(rule, "momentum_vector", None) or [])})
    return out


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


ADAPTIVE = {
    "_target_": "flwr.serverapp.strategy.DifferentialPrivacyServerSideAdaptiveClipping",
    "noise_multiplier": 0.5,
    "num_sampled_clients": 3,
    "initial_clipping_norm": 0.1,
    "clipped_count_stddev": 1.0,
}


@pytest.mark.parametrize(
    ("rule", "dp"),
    [(name, None) for name in RULES] + [("fedadam", DP), ("fedavgm", ADAPTIVE)],
    ids=[*RULES, "fedadam-dp", "fedavgm-adaptive-dp"],
)
def test_a_resumed_run_continues_bit_for_bit_with_the_optimizer_state(tmp_path, rule, dp):
    full = make(tmp_path / "full", RULES[rule], dp)
    g2 = record_to_numpy(run_rounds(full, numpy_to_record(G0), [1, 2]))

    cut = make(tmp_path / "cut", RULES[rule], dp)
    run_rounds(cut, numpy_to_record(G0), [1])
    after_one = moments(cut)
    assert after_one and all(np.any(v != 0) for v in after_one.values())  # there is state to lose
    done, saved, history = RunFolder(tmp_path / "cut").completed_rounds()
    assert done == 1 and state_path(tmp_path / "cut", 1).is_file()

    resumed = make(tmp_path / "cut", RULES[rule], dp, start_round=done, history=history)
    assert_same(moments(resumed), after_one)  # the state survived the restart
    g2_resumed = record_to_numpy(run_rounds(resumed, numpy_to_record(saved), [1]))
    assert_same(g2_resumed, g2)
    assert_same(moments(resumed), moments(full))
    assert [h["round"] for h in resumed.history] == [1, 2]


def test_a_resume_without_the_saved_state_stops_with_its_path(tmp_path):
    cut = make(tmp_path, RULES["fedadam"])
    run_rounds(cut, numpy_to_record(G0), [1])
    state_path(tmp_path, 1).unlink()
    _, _, history = RunFolder(tmp_path).completed_rounds()
    with pytest.raises(ValueError, match=r"server-state/round-1.npz is missing"):
        make(tmp_path, RULES["fedadam"], start_round=1, history=history)


def test_the_step_is_flowers_fedadam_on_the_sample_weighted_mean(tmp_path):
    """Our round equals Flower's FedAdam run by hand on the same replies; the counter is averaged apart."""
    ours = make(tmp_path, RULES["fedadam"])
    grid = StaticGrid(NODES)
    messages = list(ours.configure_train(1, numpy_to_record(G0), ConfigRecord({}), grid))
    pids = [grid.partition(m.metadata.dst_node_id) for m in messages]
    models = {pid: client_model(G0, 1, pid) for pid in pids}
    replies = [train_reply(m, models[p], 1.0, 10 + p, p) for m, p in zip(messages, pids, strict=True)]
    new = record_to_numpy(ours.aggregate_train(1, replies)[0])
    ours.close()

    flower = FedAdam(eta=0.01)
    floats = ("backbone.w", "backbone.b")
    flower.current_arrays = {k: G0[k] for k in floats}
    by_hand = [
        Message(
            RecordDict(
                {
                    "arrays": numpy_to_record({k: models[p][k] for k in floats}),
                    "metrics": MetricRecord({"num-examples": 10 + p}),
                }  # fmt: skip
            ),
            dst_node_id=1,
            message_type="train",
        )
        for p in sorted(pids)
    ]
    expected = record_to_numpy(flower.aggregate_train(1, by_hand)[0])
    for k in floats:
        np.testing.assert_allclose(new[k], expected[k].astype(np.float32), rtol=1e-6, atol=1e-7)
    counts = np.array([10 + p for p in sorted(pids)], np.float64)
    assert int(new["backbone.n"]) == round(float(np.dot(counts / counts.sum(), [15] * len(pids))))


def test_fedprox_sends_mu_with_every_round(tmp_path):
    strategy = make(tmp_path, {"_target_": "flwr.serverapp.strategy.FedProx", "proximal_mu": 0.25})
    messages = list(strategy.configure_train(1, numpy_to_record(G0), ConfigRecord({}), StaticGrid(NODES)))
    assert all(m.content["config"]["proximal-mu"] == 0.25 for m in messages)
    strategy.close()


def test_central_dp_noise_is_calibrated_seeded_and_accounted(tmp_path):
    """Updates below the clipping norm: the aggregate is their mean plus N(0, (z C / m)^2) per weight."""
    small = {**DP, "clipping_norm": 1e3}  # nothing is clipped
    runs = []
    for name in ("a", "b"):
        strategy = make(tmp_path / name, dp=small)
        runs.append((strategy, record_to_numpy(run_rounds(strategy, numpy_to_record(G0), [1]))))
    (strategy, new), (_, again) = runs
    assert_same(new, again)  # the noise is seeded by (seed, round)
    grid = StaticGrid(NODES)
    pids = sorted(grid.partition(n) for n in strategy.sample(grid, 1))
    mean = np.mean([client_model(G0, 1, p)["backbone.w"] for p in pids], axis=0)
    noise = (new["backbone.w"] - mean).ravel()
    expected_std = small["noise_multiplier"] * small["clipping_norm"] / small["num_sampled_clients"]
    assert noise.std() == pytest.approx(expected_std, rel=0.1)
    assert abs(noise.mean()) < 4 * expected_std / np.sqrt(noise.size)
    assert int(new["backbone.n"]) == int(G0["backbone.n"])  # the counters keep the global model's value
    entry = strategy.history[-1]
    assert entry["weights"] == [pytest.approx(1 / 3)] * 3
    assert entry["epsilon"] == pytest.approx(privacy.epsilon(0.5, 1, 1e-5, 3, 4))
    assert entry["delta"] == 1e-5 and entry["noise_multiplier"] == 0.5


def test_central_dp_clips_every_update_to_the_norm(tmp_path):
    """With no noise to speak of, the aggregate moves from the global model by the mean of updates of norm C."""
    tiny = {**DP, "noise_multiplier": 1e-9, "clipping_norm": 0.5}
    strategy = make(tmp_path, dp=tiny)
    new = record_to_numpy(run_rounds(strategy, numpy_to_record(G0), [1]))
    grid = StaticGrid(NODES)
    pids = sorted(grid.partition(n) for n in strategy.sample(grid, 1))
    clipped = []
    for p in pids:
        update = np.concatenate([(client_model(G0, 1, p)[k] - G0[k]).ravel() for k in ("backbone.w", "backbone.b")])
        clipped.append(update * min(1.0, 0.5 / np.linalg.norm(update)))
    moved = np.concatenate([(new[k] - G0[k]).ravel() for k in ("backbone.w", "backbone.b")])
    np.testing.assert_allclose(moved, np.mean(clipped, axis=0), atol=1e-6)
    assert np.linalg.norm(moved) <= 0.5 + 1e-6


def test_noise_never_leaves_a_negative_batchnorm_variance(tmp_path, caplog):
    """DP noise of std 1 on variances of 0.01: about half fall below 0 before the clamp, none after;
    the count is in the history and one warning is logged for the run."""
    g0 = {**G0, "backbone.bn.running_var": np.full(400, 0.01, np.float32)}
    loud = {**DP, "noise_multiplier": 1.5, "clipping_norm": 2.0}  # std z C / m = 1.0 per entry
    strategy = make(tmp_path, dp=loud)
    with caplog.at_level("WARNING", logger="fedvssl.federated.optimizers"):
        new = record_to_numpy(run_rounds(strategy, numpy_to_record(g0), [1, 2]))
    variances = new["backbone.bn.running_var"]
    assert variances.min() == 0.0 and (variances > 0).any()
    assert new["backbone.w"].min() < -1.5  # the other tensors keep their noise, negative or not
    below = [e["negative_variances"] for e in strategy.history]
    assert all(100 < n < 300 for n in below)
    assert len([r for r in caplog.records if "BatchNorm running variances" in r.getMessage()]) == 1


def test_epsilon_accumulates_over_rounds(tmp_path):
    strategy = make(tmp_path, dp=DP)
    run_rounds(strategy, numpy_to_record(G0), [1, 2, 3])
    eps = [e["epsilon"] for e in strategy.history]
    assert eps == pytest.approx([privacy.epsilon(0.5, t, 1e-5, 3, 4) for t in (1, 2, 3)])
    assert eps[0] < eps[1] < eps[2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dp": DP, "alpha": 0.9}, "strategy.alpha=0.9 must be 0 with strategy.dp"),
        ({"dp": {**DP, "num_sampled_clients": 2}}, "strategy.dp.num_sampled_clients=2 must equal"),
        ({"dp": {**DP, "noise_multiplier": 0}}, "strategy.dp.noise_multiplier=0 must be a number > 0"),
        ({"dp": {**DP, "_target_": "os.system"}}, "strategy.dp: _target_=os.system must be one of Flower's"),
        ({"rule": {"_target_": "flwr.serverapp.strategy.QFedAvg"}}, "QFedAvg"),
    ],
)
def test_bad_settings_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **kwargs)
    settings = {"alpha": kwargs.get("alpha", 0), "beta": 0, "share": "backbone", "clients_per_round": 3}
    rule = kwargs.get("rule", {"_target_": "flwr.serverapp.strategy.FedAvg"})
    with pytest.raises(ValueError, match=message):  # the config check, before any work
        ServerOptimizer.check_settings(num_clients=4, rule=rule, dp=kwargs.get("dp"), **settings)


def test_ldawa_strategy_aggregates_by_layer_cosines(tmp_path):
    strategy = make(tmp_path, cls=LDAWA, k=4)
    new = record_to_numpy(run_rounds(strategy, numpy_to_record(G0), [1]))
    models = [client_model(G0, 1, p) for p in range(4)]
    expected, weights = ldawa_aggregate(models, G0)
    assert_same(new, expected)
    entry = strategy.history[-1]
    assert entry["weights"] == [0.25] * 4
    cos_w = weights["backbone.w"] * 4
    assert entry["layer_cosine_min"] == pytest.approx(list(cos_w))  # the zero bias counts 1, the layer less
    assert all(0 < c < 1 for c in cos_w)


@pytest.mark.parametrize("kind", ["fixed", "adaptive"])
def test_the_client_side_mod_clips_the_float_update_and_keeps_the_counters(kind):
    """Flower's clipping mod on the float tensors: update [3, 3, 3, 3] -> norm 1; the int64 counter untouched."""
    from flwr.app import Context

    from fedvssl.federated.client_dp import KEY_CLIPPING, KEY_CLIPPING_NORM, clipping_mod

    sent = {"w": np.zeros(4, np.float32), "n": np.array(3, np.int64), "b": np.ones(2, np.float32)}
    config = ConfigRecord({KEY_CLIPPING_NORM: 1.0, KEY_CLIPPING: kind})
    msg = Message(RecordDict({"arrays": numpy_to_record(sent), "config": config}), dst_node_id=5, message_type="train")
    trained = {"w": np.full(4, 3.0, np.float32), "n": np.array(13, np.int64), "b": np.ones(2, np.float32)}

    def client_app(m, context):
        assert list(m.content["arrays"].keys()) == ["w", "n", "b"]  # the app gets the whole message
        content = RecordDict({"arrays": numpy_to_record(trained, in_memory=True), "metrics": MetricRecord({"x": 1.0})})
        return Message(content, reply_to=m)

    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    out = clipping_mod(msg, context, client_app)
    got = record_to_numpy(out.content["arrays"])
    assert list(got) == ["w", "n", "b"]
    np.testing.assert_allclose(got["w"], [0.5] * 4, rtol=1e-6)
    assert int(got["n"]) == 13 and got["n"].dtype == np.int64
    assert ("norm_bit" in out.content["metrics"]) == (kind == "adaptive")
    # Without the server's key the mod does nothing.
    plain = Message(RecordDict({"arrays": numpy_to_record(sent), "config": ConfigRecord({})}), dst_node_id=5,
                    message_type="train")  # fmt: skip
    np.testing.assert_array_equal(record_to_numpy(clipping_mod(plain, context, client_app).content["arrays"])["w"], 3)


def test_client_side_dp_asks_the_clients_to_clip(tmp_path):
    client = {**DP, "_target_": "flwr.serverapp.strategy.DifferentialPrivacyClientSideAdaptiveClipping"}
    client.pop("clipping_norm")
    client.update(initial_clipping_norm=0.3, clipped_count_stddev=1.0)
    strategy = make(tmp_path, dp=client)
    messages = list(strategy.configure_train(1, numpy_to_record(G0), ConfigRecord({}), StaticGrid(NODES)))
    assert all(m.content["config"]["clipping_norm"] == 0.3 for m in messages)
    assert all(m.content["config"]["dp-clipping"] == "adaptive" for m in messages)
    strategy.close()
    with pytest.raises(ValueError, match="transfer_dtype=bfloat16 must be float32 with client-side clipping"):
        make(tmp_path, dp=client, transfer_dtype="bfloat16")


def test_adaptive_clipping_is_accounted_with_its_count_query(tmp_path):
    """Andrew et al.'s pair: the update noise (at the norm Flower has just updated) and the clipped count."""
    strategy = make(tmp_path, dp=ADAPTIVE)
    before = strategy.dp.clipping_norm
    run_rounds(strategy, numpy_to_record(G0), [1])
    after = strategy.dp.clipping_norm
    assert after != before  # Flower moved it (down: see conf/strategy/dp/server_adaptive.yaml)
    z_u = strategy.dp.noise_multiplier  # Flower's update multiplier: (0.5^-2 - (2 * 1.0)^-2)^-1/2
    assert z_u == pytest.approx((0.5**-2 - 2.0**-2) ** -0.5)
    z = ((z_u * after / before) ** -2 + 2.0**-2) ** -0.5
    entry = strategy.history[0]
    assert entry["noise_multiplier"] == pytest.approx(z) and entry["clipping_norm"] == before
    assert entry["epsilon"] == pytest.approx(privacy.spent([z], 3, 4, 1e-5))
    resumed = make(tmp_path, dp=ADAPTIVE, start_round=1, history=strategy.history)
    assert resumed.dp.clipping_norm == after  # the learnt norm survived the resume


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+strategy/dp=server_fixed"], "strategy.dp is not a setting of this strategy: Flower's DP wrappers wrap"),
        (["strategy=ldawa", "+strategy/dp=server_fixed"], "strategy.dp is not a setting of this strategy"),
        (["strategy=krum", "+strategy/dp=client_fixed"], "strategy.dp is not a setting of this strategy"),
        (["strategy=ldawa", "+strategy.normalise=true"], "strategy.normalise is not a setting of this strategy"),
        (["strategy=ldawa", "strategy.normalize=1"], "strategy.normalize=1 must be true or false"),
    ],
)
def test_a_setting_the_strategy_does_not_take_is_named_by_the_config_check(overrides, message):
    """Before any work, not as a TypeError when the ServerApp builds the strategy."""
    from hydra import compose, initialize_config_dir

    from fedvssl.config.checks import CONF_DIR, validate
    from fedvssl.core.errors import ConfigError

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("config", ["run.dir=.", *overrides])
        with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
            validate(cfg)
        validate(compose("config", ["run.dir=.", "strategy=fedadam", "+strategy/dp=server_fixed"]))  # wrapped
