"""The Flower strategy: seeded sampling, reply handling, beta state, checkpoints."""

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.superlink.grid import InMemoryGrid
from helpers import StaticGrid, assert_within_bf16_rounding, r3d_backbone_state

from fedvssl.core.files import load_npz
from fedvssl.federated.records import is_in_memory, numpy_to_record, record_to_numpy, reply_record
from fedvssl.federated.strategy import FedVSSL


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages are stamped with the running task's ids, as inside a ServerApp process."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def make_strategy(tmp_path, alpha=0.9, beta=1, k=2, n=3):
    return FedVSSL(
        alpha=alpha, beta=beta, share="backbone", clients_per_round=k, num_clients=n, seed=7, out_dir=tmp_path
    )


def reply(msg, state, loss, n, pid):
    metrics = MetricRecord({"train-loss": loss, "num-examples": n, "partition-id": pid})
    return Message(content=RecordDict({"arrays": numpy_to_record(state), "metrics": metrics}), reply_to=msg)


def test_sampling_is_seeded_and_per_round(tmp_path):
    grid = StaticGrid([31, 12, 45, 7, 9])
    a = make_strategy(tmp_path, k=3, n=5)
    b = make_strategy(tmp_path, k=3, n=5)
    rounds = [a.sample(grid, r) for r in range(1, 6)]
    assert grid.queries == 1  # partition ids are asked once
    # Node ids differ between runs; the sampled *partitions* must not.
    other = StaticGrid([1000 + n for n in [31, 12, 45, 7, 9]])
    assert [[n - 1000 for n in b.sample(other, r)] for r in range(1, 6)] == rounds
    assert all(len(set(r)) == 3 and set(r) <= set(grid.nodes) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1


@pytest.mark.parametrize("beta", [0, 1])
def test_two_rounds_through_flower_messages(tmp_path, beta):
    strategy = make_strategy(tmp_path, alpha=0.9, beta=beta)
    grid = StaticGrid([101, 102, 103])
    g0 = {"backbone.w": np.full((2, 2), 10.0, np.float32), "backbone.n": np.array(4, np.int64)}
    arrays = numpy_to_record(g0)
    history = []
    for rnd in (1, 2):
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({"x": 1}), grid))
        assert len(msgs) == 2
        assert all(m.content["config"]["server-round"] == rnd for m in msgs)
        assert record_to_numpy(msgs[0].content["arrays"]).keys() == g0.keys()
        states = [
            {"backbone.w": np.full((2, 2), float(i + rnd), np.float32), "backbone.n": np.array(8, np.int64)}
            for i in range(2)
        ]
        losses, counts = [0.5, 1.5], [10, 30]
        replies = [
            reply(m, s, lo, c, i) for i, (m, s, lo, c) in enumerate(zip(msgs, states, losses, counts, strict=True))
        ]
        new, metrics = strategy.aggregate_train(rnd, replies)
        strategy.wait_saved()  # the round's files are written in the background
        soft = np.exp(-np.array(losses)) / np.exp(-np.array(losses)).sum()
        w = 0.9 * soft + 0.1 * np.array(counts) / 40
        a_t = w[0] * (0 + rnd) + w[1] * (1 + rnd)
        prev = record_to_numpy(arrays)["backbone.w"][0, 0]
        expected = 0.5 * a_t + 0.5 * prev if beta and rnd >= 2 else a_t
        out = record_to_numpy(new)
        np.testing.assert_allclose(out["backbone.w"], expected, rtol=1e-6)
        assert out["backbone.n"].dtype == np.int64
        np.testing.assert_allclose(json.loads((tmp_path / "history.json").read_text())[-1]["weights"], w)
        saved = load_npz(tmp_path / "checkpoints" / f"round-{rnd}.npz")
        assert list(saved) == ["backbone.w", "backbone.n"]
        np.testing.assert_array_equal(saved["backbone.w"], out["backbone.w"])
        history.append(out["backbone.w"][0, 0])
        arrays = new
    assert len(strategy.history) == 2


def test_too_few_replies_stop_with_a_reason(tmp_path):
    strategy = make_strategy(tmp_path)
    with pytest.raises(RuntimeError, match=r"round 1: 0 of 0 clients replied, fewer than strategy.min_replies=1"):
        strategy.aggregate_train(1, [])
    assert (tmp_path / "stopped.txt").read_text().startswith("round 1: 0 of 0")


def test_resumed_rounds_are_numbered_on(tmp_path):
    strategy = FedVSSL(0.0, 1, "backbone", 2, 3, seed=7, out_dir=tmp_path, start_round=4, history=[{"round": 4}])
    msgs = list(
        strategy.configure_train(
            1, numpy_to_record({"backbone.w": np.ones(2, np.float32)}), ConfigRecord({}), StaticGrid([1, 2, 3])
        )
    )
    assert msgs[0].content["config"]["server-round"] == 5
    replies = [reply(m, {"backbone.w": np.zeros(2, np.float32)}, 1.0, 5, i) for i, m in enumerate(msgs)]
    new, _ = strategy.aggregate_train(1, replies)
    strategy.close()
    np.testing.assert_allclose(record_to_numpy(new)["backbone.w"], 0.5)  # beta applies in the first resumed round
    assert [h["round"] for h in strategy.history] == [4, 5] and (tmp_path / "checkpoints" / "round-5.npz").is_file()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"alpha": 1.5}, "strategy.alpha"), ({"beta": 2}, "strategy.beta"), ({"k": 4}, "clients_per_round")],
)
def test_invalid_settings_name_the_key(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_strategy(tmp_path, **kwargs)


def test_record_round_trip_keeps_names_dtypes_and_scalars():
    state = {"a": np.array(3, np.int64), "b": np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2]}
    back = record_to_numpy(numpy_to_record(state))
    assert list(back) == ["a", "b"]
    assert back["a"].shape == () and back["a"].dtype == np.int64
    np.testing.assert_array_equal(back["b"], state["b"])


def test_checkpoint_retention_keeps_the_newest_and_every_kth(tmp_path):
    """9 rounds, keep_last=2, keep_every=4: rounds 4, 8 and 9 stay; resume still finds its round."""
    import os
    import stat

    from fedvssl.core.run_folder import RunFolder

    strategy = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path, keep_last=2, keep_every=4)
    state = numpy_to_record({"backbone.w": np.ones(2, np.float32)})
    for _ in range(9):
        msgs = list(strategy.configure_train(1, state, ConfigRecord({}), StaticGrid([1, 2, 3])))
        replies = [reply(m, {"backbone.w": np.full(2, i, np.float32)}, 1.0, 5, i) for i, m in enumerate(msgs)]
        state, _ = strategy.aggregate_train(1, replies)
        strategy.start_round += 1  # as the next round of one run
    strategy.close()
    kept = sorted(int(f.stem.split("-")[1]) for f in (tmp_path / "checkpoints").glob("round-*.npz"))
    assert kept == [4, 8, 9]
    assert RunFolder(tmp_path).completed_rounds()[0] == 9
    umask = os.umask(0o022)
    os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "checkpoints" / "round-9.npz").stat().st_mode)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


class EqualWeights(FedVSSL):
    """A new client weighting: every replying client counts the same."""

    def client_weights(self, losses, num_examples):
        return np.full(len(losses), 1.0 / len(losses))


def test_a_new_weighting_is_one_subclass_and_one_yaml(tmp_path):
    from helpers import ROOT
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    (tmp_path / "strategy").mkdir()
    (tmp_path / "strategy" / "equal.yaml").write_text(
        "defaults:\n  - fedvssl\n  - _self_\n_target_: test_strategy.EqualWeights\nbeta: 0\n"
    )
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["strategy=equal", f"hydra.searchpath=[file://{tmp_path}]", "partition.num_clients=3"])
    strategy = instantiate(cfg.strategy, num_clients=3, seed=7, out_dir=str(tmp_path / "run"), _convert_="all")
    assert type(strategy) is EqualWeights and strategy.alpha == 0.9  # the rest comes from fedvssl.yaml
    state = numpy_to_record({"backbone.w": np.zeros(2, np.float32)})
    msgs = list(strategy.configure_train(1, state, ConfigRecord({}), StaticGrid([1, 2, 3])))
    states = [{"backbone.w": np.full(2, 3.0 * i, np.float32)} for i in range(3)]
    replies = [reply(m, states[i], 0.1 * i, 1 + 9 * i, i) for i, m in enumerate(msgs)]
    new, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(record_to_numpy(new)["backbone.w"], 3.0)  # (0 + 3 + 6) / 3
    assert strategy.history[0]["weights"] == pytest.approx([1 / 3] * 3)


@pytest.fixture(scope="module")
def transfer_state():
    return r3d_backbone_state()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_round_sends_and_receives_in_the_transfer_dtype(tmp_path, transfer_state, dtype):
    """Server -> clients -> server: bytes in history.json, float32 aggregate and checkpoint."""
    strategy = FedVSSL(0.9, 1, "backbone", 2, 3, seed=7, out_dir=tmp_path, transfer_dtype=dtype)
    msgs = list(
        strategy.configure_train(1, numpy_to_record(transfer_state), ConfigRecord({"x": 1}), StaticGrid([1, 2, 3]))
    )
    received = [record_to_numpy(m.content["arrays"]) for m in msgs]
    assert_within_bf16_rounding(received[0], transfer_state)
    # Each client returns what it got, scaled, in the same dtype the server sent.
    states = [{k: (v * (1 + i) if v.dtype == np.float32 else v) for k, v in r.items()} for i, r in enumerate(received)]
    metrics = [MetricRecord({"train-loss": 1.0, "num-examples": 10, "partition-id": i}) for i in range(2)]
    replies = [
        Message(content=RecordDict({"arrays": reply_record(s, r, dtype, False), "metrics": mr}), reply_to=m)
        for m, s, r, mr in zip(msgs, states, received, metrics, strict=True)
    ]
    new, _ = strategy.aggregate_train(1, replies)
    strategy.close()
    entry = json.loads((tmp_path / "history.json").read_text())[-1]
    checkpoint = load_npz(tmp_path / "checkpoints" / "round-1.npz")
    w = "backbone.stem.conv.weight"
    assert checkpoint[w].dtype == np.float32 and record_to_numpy(new)[w].dtype == np.float32
    assert_within_bf16_rounding(
        checkpoint, {k: 1.5 * v if v.dtype == np.float32 else v for k, v in transfer_state.items()}
    )
    return_sizes = (entry["bytes_sent"], entry["bytes_received"])
    full = 2 * numpy_to_record(transfer_state).count_bytes()
    if dtype == "float32":
        assert return_sizes == (full, full)
        np.testing.assert_allclose(checkpoint[w], 1.5 * transfer_state[w], rtol=1e-6)
    else:
        assert all(0.5 <= n / full < 0.501 for n in return_sizes)
        assert not np.allclose(checkpoint[w], 1.5 * transfer_state[w], rtol=1e-6, atol=0)


def test_bf16_replies_are_updates_added_to_the_float32_global_model(tmp_path, transfer_state):
    """With bfloat16 transfer, rounding costs 2^-9 of the clients' updates, not of the weights.

    Clients start from the global model G as they receive it and move it by small updates
    u_k. The float32 transfer aggregates G + mean(u_k); the bfloat16 one must land within
    the rounding of the updates of that, far closer than bfloat16's rounding of G itself.
    """
    import torch

    rng = np.random.default_rng(0)
    floats = [k for k, v in transfer_state.items() if v.dtype == np.float32 and v.size > 1000]
    updates = [
        {
            k: (1e-3 * transfer_state[k].std() * rng.standard_normal(transfer_state[k].shape)).astype(np.float32)
            for k in floats
        }
        for _ in range(2)
    ]
    aggregates = {}
    for dtype in ("float32", "bfloat16"):
        strategy = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path / dtype, transfer_dtype=dtype)
        msgs = list(
            strategy.configure_train(1, numpy_to_record(transfer_state), ConfigRecord({}), StaticGrid([1, 2, 3]))
        )
        replies = []
        for i, (m, u) in enumerate(zip(msgs, updates, strict=True)):
            got = record_to_numpy(m.content["arrays"])  # in bfloat16: G rounded
            trained = {k: got[k] + u[k] if k in u else got[k] for k in got}
            mr = MetricRecord({"train-loss": 1.0, "num-examples": 10, "partition-id": i})
            arrays = reply_record(trained, got, dtype, False)
            replies.append(Message(content=RecordDict({"arrays": arrays, "metrics": mr}), reply_to=m))
        aggregates[dtype] = record_to_numpy(strategy.aggregate_train(1, replies)[0])
        strategy.close()
        # Each client's update norm is that of the update it made, in either dtype.
        made = [np.sqrt(sum(float(np.sum(u[k].astype(np.float64) ** 2)) for k in floats)) for u in updates]
        np.testing.assert_allclose(strategy.history[-1]["client_update_norm"], made, rtol=1e-2)
    for k in floats:
        g, fp32, bf16 = transfer_state[k], aggregates["float32"][k], aggregates["bfloat16"][k]
        np.testing.assert_allclose(fp32, g + (updates[0][k] + updates[1][k]) / 2, rtol=1e-6, atol=1e-9)
        error = np.abs(bf16 - fp32).max()
        # Rounding to 8 significant bits moves an update by at most 2^-8 of it; float32 sums add their own.
        assert error <= 2**-8 * max(np.abs(u[k]).max() for u in updates) + 2e-7 * np.abs(g).max(), k
        weight_rounding = np.abs(torch.from_numpy(g).bfloat16().float().numpy() - g).max()
        assert error < 0.05 * weight_rounding, k


class InProcessGrid(StaticGrid, InMemoryGrid):
    """A StaticGrid that is, to the strategy, the grid of Flower's in-process simulation."""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_in_process_simulation_gets_numpy_backed_records_and_grpc_gets_bytes(tmp_path, transfer_state, dtype):
    """Records pass Ray's object store without a pickled copy in the simulation; gRPC takes bytes only."""
    for grid, in_memory in ((InProcessGrid([1, 2, 3]), True), (StaticGrid([1, 2, 3]), False)):
        strategy = FedVSSL(0.9, 1, "backbone", 2, 3, seed=7, out_dir=tmp_path / str(in_memory), transfer_dtype=dtype)
        msgs = list(strategy.configure_train(1, numpy_to_record(transfer_state), ConfigRecord({}), grid))
        assert all(is_in_memory(m.content["arrays"]) == in_memory for m in msgs)
        assert all(isinstance(a.data, bytes) != in_memory for a in msgs[0].content["arrays"].values())
        got = record_to_numpy(msgs[0].content["arrays"])
        assert_within_bf16_rounding(got, transfer_state)
        # Clients reply in kind (client_app): here one of each, which the server takes alike.
        # They send back what they got: in bfloat16, a zero update.
        replies = [
            Message(
                content=RecordDict(
                    {
                        "arrays": reply_record(got, got, dtype, in_memory=(i == 0)),
                        "metrics": MetricRecord({"train-loss": 1.0, "num-examples": 10, "partition-id": i}),
                    }
                ),
                reply_to=m,
            )
            for i, m in enumerate(msgs)
        ]
        new, _ = strategy.aggregate_train(1, replies)
        assert is_in_memory(new) == in_memory
        # Flower keeps the replies through the next round; their tensors are let go of once aggregated.
        assert all(len(r.content["arrays"]) == 0 for r in replies)
        w = "backbone.stem.conv.weight"
        np.testing.assert_array_equal(record_to_numpy(new)[w], transfer_state[w])  # G plus nothing
        # The next round's messages carry the aggregate as it is: no second conversion.
        again = list(strategy.configure_train(2, new, ConfigRecord({}), grid))
        strategy.close()
        if dtype == "float32":
            assert again[0].content["arrays"] is new


def test_clients_are_told_the_transfer_dtype_with_each_message(tmp_path, transfer_state):
    """Only the strategy holds strategy.transfer_dtype; every train message carries it to the client."""
    from helpers import ROOT
    from hydra import compose, initialize_config_dir

    from fedvssl.config.checks import client_config

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["run.dir=.", "strategy.transfer_dtype=bfloat16"])
    assert cfg.strategy.transfer_dtype == "bfloat16" and "transfer_dtype" not in client_config(cfg).strategy
    strategy = FedVSSL(0.9, 1, "backbone", 2, 3, seed=7, out_dir=tmp_path, transfer_dtype="bfloat16")
    state = {"backbone.w": transfer_state["backbone.stem.conv.weight"]}
    msgs = strategy.configure_train(1, numpy_to_record(state), ConfigRecord({}), StaticGrid([1, 2, 3]))
    assert all(m.content["config"]["transfer-dtype"] == "bfloat16" for m in msgs)


def test_history_records_each_clients_update_norm_and_bytes(tmp_path):
    strategy = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path)
    g0 = {"backbone.w": np.zeros((2, 2), np.float32), "backbone.n": np.array(4, np.int64)}
    msgs = list(strategy.configure_train(1, numpy_to_record(g0), ConfigRecord({}), StaticGrid([1, 2, 3])))
    moved = [np.full((2, 2), 1.0 + i, np.float32) for i in (0, 1)]  # client i moved each weight by 1 + i
    states = [{"backbone.w": w, "backbone.n": np.array(100, np.int64)} for w in moved]
    replies = [reply(m, states[i], 1.0, 5, i) for i, m in enumerate(msgs)]
    strategy.aggregate_train(1, replies)
    strategy.close()
    entry = json.loads((tmp_path / "history.json").read_text())[-1]
    # |1 - 0| and |2 - 0| over 4 weights; the BatchNorm counter's jump of 96 is left out.
    assert entry["client_update_norm"] == pytest.approx([2.0, 4.0])
    assert entry["update_norm"] == pytest.approx(3.0)  # the equal-weight mean, 1.5 everywhere
    sizes = [numpy_to_record(s).count_bytes() for s in states]
    assert entry["client_bytes_received"] == sizes and entry["bytes_received"] == sum(sizes)


class EveryOther:
    """A monitor that scores the global model's first value after every 2nd round."""

    every = 2

    def __init__(self):
        self.seen = []

    def __call__(self, state):
        self.seen.append(float(state["backbone.w"][0]))
        return {"global": {"ucf101": {"R@1": 10.0 * len(self.seen)}}}

    def summary(self, results):
        return f"R@1 {results['global']['ucf101']['R@1']:.1f}"


class Recorder:
    def __init__(self):
        self.rounds, self.monitored, self.closed = [], [], False

    def log_round(self, entry):
        self.rounds.append(entry["round"])

    def log_monitor(self, server_round, results):
        self.monitored.append((server_round, results))

    def close(self):
        self.closed = True


def test_the_monitor_runs_every_n_rounds_through_the_evaluate_hook(tmp_path, caplog):
    caplog.set_level("INFO", logger="fedvssl.federated.strategy")
    monitor, logger = EveryOther(), Recorder()
    strategy = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path, monitor=monitor, logger=logger)
    arrays = numpy_to_record({"backbone.w": np.zeros(2, np.float32)})
    returned = {0: strategy.evaluate_global(0, arrays)}  # Flower's call before round 1
    for rnd in (1, 2, 3, 4):
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), StaticGrid([1, 2, 3])))
        replies = [reply(m, {"backbone.w": np.full(2, rnd, np.float32)}, 1.0, 5, i) for i, m in enumerate(msgs)]
        arrays, _ = strategy.aggregate_train(rnd, replies)
        returned[rnd] = strategy.evaluate_global(rnd, arrays)
    assert [r for r, v in returned.items() if v is not None] == [2, 4]
    assert monitor.seen == [2.0, 4.0]  # the global model of the round
    assert dict(returned[4]) == {"global/ucf101/R@1": 20.0}
    history = json.loads((tmp_path / "history.json").read_text())
    assert ["monitor" in h for h in history] == [False, True, False, True]
    assert history[3]["monitor"]["global"] == {"ucf101": {"R@1": 20.0}} and history[3]["monitor"]["time_s"] >= 0
    assert logger.rounds == [1, 2, 3, 4] and [r for r, _ in logger.monitored] == [2, 4]
    lines = [r.getMessage() for r in caplog.records if "R@1" in r.getMessage()]
    assert [line.rsplit(" (", 1)[0] for line in lines] == ["round 2: R@1 10.0", "round 4: R@1 20.0"]
    strategy.close()
    assert logger.closed


@pytest.mark.parametrize(("done", "scored"), [(4, False), (3, False), (2, True)])
def test_a_resumed_run_scores_its_last_round_if_the_monitor_missed_it(tmp_path, done, scored):
    """Flower's round-0 call after a resume is the last completed round: scored if due and not yet scored."""
    history = [{"round": r} for r in range(1, done + 1)]
    if done == 4:
        history[-1]["monitor"] = {"global": {}, "time_s": 1.0}
    monitor = EveryOther()
    strategy = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path, start_round=done, history=history)
    strategy.monitor = monitor
    result = strategy.evaluate_global(0, numpy_to_record({"backbone.w": np.ones(2, np.float32)}))
    assert (result is not None) == scored and len(monitor.seen) == int(scored)
    if scored:
        assert "monitor" in json.loads((tmp_path / "history.json").read_text())[-1]


def test_a_failing_monitor_is_recorded_and_training_goes_on(tmp_path, caplog):
    class Broken(EveryOther):
        every = 1

        def __call__(self, state):
            raise RuntimeError("CUDA out of memory")

    strategy = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path, monitor=Broken())
    arrays = numpy_to_record({"backbone.w": np.zeros(2, np.float32)})
    for rnd in (1, 2):
        msgs = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), StaticGrid([1, 2, 3])))
        arrays, _ = strategy.aggregate_train(
            rnd, [reply(m, {"backbone.w": np.ones(2, np.float32)}, 1.0, 5, i) for i, m in enumerate(msgs)]
        )
        assert strategy.evaluate_global(rnd, arrays) is None
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["monitor"] for h in history] == [{"error": "RuntimeError: CUDA out of memory"}] * 2
    assert "round 2: the retrieval monitor failed, training goes on: RuntimeError: CUDA out of memory" in caplog.text


def test_each_round_gives_the_freed_heap_back(tmp_path, monkeypatch):
    # The server's flat memory over rounds rests on this call (benchmarks/runtime_memory.py).
    from fedvssl.federated import strategy as strategy_module

    calls = []
    monkeypatch.setattr(strategy_module, "release_heap", lambda: calls.append(1))
    strategy = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path)
    g = {"backbone.w": np.zeros((2, 2), np.float32)}
    for rnd in (1, 2):
        msgs = list(strategy.configure_train(rnd, numpy_to_record(g), ConfigRecord({}), StaticGrid([1, 2, 3])))
        strategy.aggregate_train(rnd, [reply(m, g, 1.0, 5, i) for i, m in enumerate(msgs)])
        assert len(calls) == rnd
    assert strategy.history[-1]["server_shm_mb"] >= 0.0


def one_round(strategy):
    g = {"backbone.w": np.zeros((2, 2), np.float32)}
    msgs = list(strategy.configure_train(1, numpy_to_record(g), ConfigRecord({}), StaticGrid([1, 2, 3])))
    return strategy.aggregate_train(1, [reply(m, g, 1.0, 5, i) for i, m in enumerate(msgs)])


def test_a_rounds_files_are_written_while_the_next_round_runs(tmp_path, monkeypatch):
    """aggregate_train hands the checkpoint to a writer thread and returns; close waits for it."""
    import threading

    from fedvssl.core.run_folder import RunFolder

    returned, seen = threading.Event(), []
    save = RunFolder.save_checkpoint

    def slow_save(self, server_round, state):
        seen.append(returned.wait(timeout=30))  # a write in the caller's thread would wait in vain
        save(self, server_round, state)

    monkeypatch.setattr(RunFolder, "save_checkpoint", slow_save)
    strategy = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path)
    one_round(strategy)
    returned.set()
    strategy.close()
    assert seen == [True]
    assert RunFolder(tmp_path).completed_rounds()[0] == 1  # checkpoint and history both on disk


def test_a_failed_background_write_stops_the_run(tmp_path, monkeypatch):
    from fedvssl.core.run_folder import RunFolder

    def full_disk(self, server_round, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunFolder, "save_checkpoint", full_disk)
    going_on = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path)
    one_round(going_on)
    with pytest.raises(OSError, match="No space left"):
        one_round(going_on)  # the next round's aggregation waits for the write and raises its error
    last = FedVSSL(0.0, 0, "backbone", 2, 3, seed=7, out_dir=tmp_path)
    one_round(last)
    with pytest.raises(OSError, match="No space left"):
        last.close()  # the ServerApp's end waits for the last round's write
    assert not (tmp_path / "history.json").exists()  # a round counts only once its checkpoint is written


def test_the_freed_heap_is_given_back_once_it_passes_the_slack(monkeypatch):
    from fedvssl.core import processes

    own, trims = [1000.0], []

    class Libc:
        def malloc_trim(self, pad):
            trims.append(pad)
            own[0] = 1000.0  # the freed heap is back with the OS

    monkeypatch.setattr(processes.ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setattr(processes, "rss_mb", lambda: own[0])
    monkeypatch.setattr(processes, "object_store_mb", lambda: 0.0)
    monkeypatch.setattr(processes, "_kept_from", None)
    assert processes.release_heap(slack_mb=100) and len(trims) == 1  # the first call sets the baseline
    own[0] = 1090.0
    assert not processes.release_heap(slack_mb=100) and len(trims) == 1  # within the slack: pages kept
    own[0] = 1150.0
    assert processes.release_heap(slack_mb=100) and len(trims) == 2 and own[0] == 1000.0
