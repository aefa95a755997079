"""Every reply is checked before it counts: one bad reply among three honest ones is that client's failure.

Each case sends one round through ``configure_train`` / ``aggregate_train`` with three honest
replies and one bad one, and asserts the failure record (history, log, logger) and that the
new global model is exactly what the three honest replies alone aggregate to.
"""

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.superlink.grid import InMemoryGrid
from helpers import StaticGrid, stamp_task_identity, train_reply

from fedvssl.federated.records import numpy_to_record, record_to_numpy
from fedvssl.federated.strategy import FedVSSL

NODES = [11, 12, 13, 14]  # partitions 0..3; partition 3 is the bad one
SIZE = 20  # videos listed in every partition
G = {
    "backbone.w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    "backbone.b": np.array([0.5, -0.25, 0.125], np.float32),
    "backbone.bn.num_batches_tracked": np.array(40, np.int64),
}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    stamp_task_identity(monkeypatch)


class Recorder:
    """A logger that keeps the entries it gets."""

    def __init__(self):
        self.entries = []

    def log_round(self, entry):
        self.entries.append(entry)

    def close(self):
        pass


def honest_state(pid: int) -> dict:
    rng = np.random.default_rng(pid)
    state = {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in G.items() if v.dtype == np.float32}
    state["backbone.bn.num_batches_tracked"] = np.array(40 + 5 * (pid + 1), np.int64)
    return state


def honest(msg, pid: int) -> Message:
    return train_reply(msg, honest_state(pid), 0.8 + 0.3 * pid, 10 + pid, pid)


def one_round(tmp_path, bad=None, grid=None, **settings):
    """Round 1 with partitions 0-2 honest and partition 3 replying ``bad(msg)`` (no reply if None).

    The server knows the partitions' sizes (as with published partitions) unless ``settings`` say otherwise.
    """
    options = {"alpha": 0.9, "beta": 1, "share": "backbone", "clients_per_round": 4, "num_clients": 4, "seed": 7}
    options.update({"published_partitions": True, **settings})
    strategy = FedVSSL(**options, out_dir=tmp_path, partition_sizes=dict.fromkeys(range(4), SIZE), logger=Recorder())
    grid = grid or StaticGrid(NODES)
    msgs = list(strategy.configure_train(1, numpy_to_record(G), ConfigRecord({}), grid))
    by_partition = {grid.partition(m.metadata.dst_node_id): m for m in msgs}
    replies = [honest(by_partition[pid], pid) for pid in range(3)]
    if bad is not None:
        replies.append(bad(by_partition[3]))
    new, _ = strategy.aggregate_train(1, replies)
    strategy.close()
    return strategy, record_to_numpy(new)


@pytest.fixture(scope="module")
def honest_only(tmp_path_factory):
    """The global model of the three honest replies alone."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        stamp_task_identity(monkeypatch)
        return one_round(tmp_path_factory.mktemp("honest"))[1]


def with_arrays(msg, arrays: ArrayRecord, pid=3, **metrics) -> Message:
    values = {"train-loss": 1.0, "num-examples": 10, "partition-id": pid, **metrics}
    return Message(content=RecordDict({"arrays": arrays, "metrics": MetricRecord(values)}), reply_to=msg)


def with_state(msg, changes: dict, drop: tuple = (), **metrics) -> Message:
    state = {k: v for k, v in {**honest_state(3), **changes}.items() if k not in drop}
    return with_arrays(msg, numpy_to_record(state), **metrics)


def raw_metrics(msg, **values) -> Message:
    """A reply whose MetricRecord holds values Flower's constructor refuses (a transport that skips the check)."""
    reply = with_state(msg, {})
    record = reply.content["metrics"]
    for key, value in values.items():
        if value is None:
            del record[key]
        else:
            record.__dict__["_data"][key] = value
    return reply


def garbled(key: str, data: bytes, dtype: str = "float32"):
    def make(msg):
        arrays = numpy_to_record(honest_state(3))
        shape = tuple(G[key].shape)
        arrays[key] = Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)
        return with_arrays(msg, arrays)

    return make


def nan_at(key, value):
    w = honest_state(3)[key].copy()
    w.reshape(-1)[1] = value
    return lambda msg: with_state(msg, {key: w})


CASES = {
    # Tensors against the global model: keys, shapes, dtype family, values.
    "missing tensor": (lambda m: with_state(m, {}, drop=("backbone.b",)), "missing ['backbone.b']"),
    "extra tensor": (
        lambda m: with_state(m, {"head.fc.weight": np.zeros((2, 2), np.float32)}),
        "unexpected ['head.fc.weight']",
    ),
    "wrong shape": (
        lambda m: with_state(m, {"backbone.w": np.zeros((3, 2), np.float32)}),
        "tensor backbone.w has shape (3, 2) where the global model's is (2, 3)",
    ),
    "integer weights": (
        lambda m: with_state(m, {"backbone.w": np.zeros((2, 3), np.int32)}),
        "tensor backbone.w has dtype int32 where the global model's is float32",
    ),
    "float counter": (
        lambda m: with_state(m, {"backbone.bn.num_batches_tracked": np.array(45.0)}),
        "has dtype float64 where the global model's is int64",
    ),
    "NaN value": (nan_at("backbone.w", np.nan), "tensor backbone.w holds non-finite values"),
    "Inf value": (nan_at("backbone.b", np.inf), "tensor backbone.b holds non-finite values"),
    "float64 beyond float32": (
        lambda m: with_state(m, {"backbone.b": np.array([1e300, 0.0, 0.0])}),
        "tensor backbone.b holds non-finite values",
    ),
    "counter beyond int64": (
        lambda m: with_state(m, {"backbone.bn.num_batches_tracked": np.array(2**64 - 1, np.uint64)}),
        "holds integers beyond int64",
    ),
    "not npy bytes": (garbled("backbone.w", b"\x00" * 40), "tensor backbone.w is not readable .npy data"),
    "truncated bytes": (
        garbled("backbone.w", numpy_to_record({"w": G["backbone.w"]})["w"].data[:-8]),
        "tensor backbone.w holds fewer bytes than its shape (2, 3) needs",
    ),
    "bfloat16 label on float32": (
        garbled("backbone.w", numpy_to_record({"w": G["backbone.w"]})["w"].data, dtype="bfloat16"),
        "tensor backbone.w says bfloat16 but holds float32",
    ),
    # Records and metrics.
    "no metrics": (
        lambda m: Message(content=RecordDict({"arrays": numpy_to_record(honest_state(3))}), reply_to=m),
        "the reply holds 0 MetricRecords, expected one",
    ),
    "two array records": (
        lambda m: Message(
            content=RecordDict(
                {
                    "a": numpy_to_record(honest_state(3)),
                    "b": numpy_to_record(honest_state(3)),
                    "metrics": MetricRecord({"train-loss": 1.0, "num-examples": 10, "partition-id": 3}),
                }
            ),
            reply_to=m,
        ),
        "the reply holds 2 ArrayRecords, expected one",
    ),
    "no train-loss": (lambda m: raw_metrics(m, **{"train-loss": None}), "no train-loss metric"),
    "no num-examples": (lambda m: raw_metrics(m, **{"num-examples": None}), "no num-examples metric"),
    "no partition-id": (lambda m: raw_metrics(m, **{"partition-id": None}), "no partition-id metric"),
    "NaN loss": (lambda m: with_state(m, {}, **{"train-loss": float("nan")}), "metric train-loss=nan is not finite"),
    "Inf loss": (lambda m: with_state(m, {}, **{"train-loss": float("inf")}), "metric train-loss=inf is not finite"),
    "negative loss": (
        lambda m: with_state(m, {}, **{"train-loss": -1e6}),
        "metric train-loss=-1e+06 is negative, which no pretext loss can be",
    ),
    "huge integer loss": (lambda m: with_state(m, {}, **{"train-loss": 10**400}), "is not finite"),
    "text loss": (lambda m: raw_metrics(m, **{"train-loss": "0.1"}), "metric train-loss='0.1' is not a number"),
    "bool loss": (lambda m: raw_metrics(m, **{"train-loss": True}), "metric train-loss=True is not a number"),
    "list loss": (lambda m: with_state(m, {}, **{"train-loss": [0.1, 0.2]}), "is not a number"),
    "zero examples": (lambda m: with_state(m, {}, **{"num-examples": 0}), "metric num-examples=0 is not positive"),
    "negative examples": (lambda m: with_state(m, {}, **{"num-examples": -5}), "num-examples=-5 is not positive"),
    "fractional examples": (
        lambda m: with_state(m, {}, **{"num-examples": 12.5}),
        "metric num-examples=12.5 is not an integer",
    ),
    "bool examples": (lambda m: raw_metrics(m, **{"num-examples": True}), "num-examples=True is not an integer"),
    "1e12 examples": (
        lambda m: with_state(m, {}, **{"num-examples": 10**12}),
        "metric num-examples=1000000000000 exceeds the 20 videos of partition 3",
    ),
    "one example more than the partition": (
        lambda m: with_state(m, {}, **{"num-examples": SIZE + 1}),
        "num-examples=21 exceeds the 20 videos of partition 3",
    ),
    "partition id out of range": (
        lambda m: with_state(m, {}, **{"partition-id": 7}),
        "metric partition-id=7 is not a partition of this run (0..3)",
    ),
    "text partition id": (lambda m: raw_metrics(m, **{"partition-id": "3"}), "partition-id='3' is not an integer"),
    "a partition that already replied": (
        lambda m: with_state(m, {}, **{"partition-id": 1}),
        "partition 1 already replied in this round",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_reply_is_a_failure_and_the_others_aggregate_exactly(tmp_path, honest_only, case, caplog):
    bad, reason = CASES[case]
    strategy, new = one_round(tmp_path, bad)
    (entry,) = json.loads((tmp_path / "history.json").read_text())
    assert entry["partition_ids"] == [0, 1, 2]
    assert len(entry["failures"]) == 1, entry["failures"]
    failure = entry["failures"][0]
    assert failure["node_id"] == 14 and failure["partition_id"] == 3
    assert failure["reason"].startswith("rejected: ") and reason in failure["reason"], failure["reason"]
    assert "\n" not in failure["reason"]
    assert strategy.logger.entries[0]["failures"] == entry["failures"]  # TensorBoard's logger gets it
    assert f"round 1: client 3 failed: {failure['reason']}" in caplog.text  # main.log
    assert list(new) == list(G)
    for k in G:
        assert new[k].dtype == G[k].dtype
        np.testing.assert_array_equal(new[k], honest_only[k], err_msg=k)


def test_the_honest_aggregate_differs_from_that_of_four(tmp_path, honest_only):
    """The comparison above can fail: a fourth honest reply changes the global model."""
    _, four = one_round(tmp_path, lambda m: honest(m, 3))
    assert not np.array_equal(four["backbone.w"], honest_only["backbone.w"])


def test_a_float64_copy_of_legal_values_is_cast_and_counts(tmp_path):
    state = honest_state(3)
    wide = {k: (v.astype(np.float64) if v.dtype == np.float32 else v.astype(np.int32)) for k, v in state.items()}
    strategy, cast = one_round(tmp_path / "wide", lambda m: train_reply(m, wide, 1.7, 13, 3))
    assert strategy.history[0]["failures"] == [] and strategy.history[0]["partition_ids"] == [0, 1, 2, 3]
    _, same = one_round(tmp_path / "narrow", lambda m: train_reply(m, state, 1.7, 13, 3))
    for k in G:
        assert cast[k].dtype == G[k].dtype
        np.testing.assert_array_equal(cast[k], same[k])


def test_other_metrics_that_are_not_numbers_are_left_out_and_the_reply_counts(tmp_path):
    def odd(msg):
        reply = with_state(msg, {})
        reply.content["metrics"]["train-time"] = [1.0, 2.0]
        reply.content["metrics"].__dict__["_data"]["note"] = "hello"
        return reply

    strategy, _ = one_round(tmp_path, odd)
    entry = strategy.history[0]
    assert entry["failures"] == [] and entry["partition_ids"] == [0, 1, 2, 3]
    assert "note" not in entry and "train-time" not in entry


def test_partition_sizes_bound_in_the_simulation_and_with_published_partitions(tmp_path):
    """A deployment's SuperNode may read its own partition files: there only max_num_examples bounds num-examples."""

    class InProcessGrid(StaticGrid, InMemoryGrid):
        pass

    def many(msg):
        return with_state(msg, {}, **{"num-examples": SIZE + 5})

    deployed, _ = one_round(tmp_path / "a", many, published_partitions=False)
    assert deployed.history[0]["failures"] == []
    simulated, _ = one_round(tmp_path / "b", many, grid=InProcessGrid(NODES), published_partitions=False)
    published, _ = one_round(tmp_path / "c", many)
    bounded, _ = one_round(tmp_path / "d", many, published_partitions=False, max_num_examples=24)
    for strategy in (simulated, published):
        assert "exceeds the 20 videos of partition 3" in strategy.history[0]["failures"][0]["reason"]
    assert "exceeds strategy.max_num_examples=24" in bounded.history[0]["failures"][0]["reason"]


def test_too_few_honest_replies_stop_the_run_with_the_first_reason(tmp_path):
    with pytest.raises(RuntimeError, match=r"round 1: 3 of 4 clients replied, fewer than strategy.min_replies=4; "):
        one_round(tmp_path, nan_at("backbone.w", np.nan), min_replies=4)
    assert "tensor backbone.w holds non-finite values" in (tmp_path / "stopped.txt").read_text()


def test_a_node_that_reports_no_partition_id_is_left_out_of_the_sampling(tmp_path, caplog):
    class Liar(StaticGrid):
        def partition(self, node):
            return 99 if node == 15 else super().partition(node)

    strategy = FedVSSL(0.9, 1, "backbone", 2, 4, seed=7, out_dir=tmp_path)
    chosen = strategy.sample(Liar([11, 12, 13, 14, 15]), 1)
    assert 15 not in chosen and len(chosen) == 2
    reason = "ValueError: partition-id=99 is not in 0..3"
    assert f"node 15 is left out: no partition id of this run ({reason})" in caplog.text


# The same rule for the other inputs from outside: a checkpoint, a published partition file.


class Loader(list):
    """Batches as a retrieval loader yields them, with the dataset whose records name the videos."""

    def __init__(self, batches, names):
        super().__init__(batches)
        self.dataset = type("Views", (), {"records": [type("Record", (), {"name": n})() for n in names]})()


class Blows(torch.nn.Module):
    """A backbone whose output is NaN for clips brighter than 0.5 (as a negative BatchNorm variance makes it)."""

    def forward(self, x):
        out = x.mean(1, keepdim=True).expand(-1, 8, -1, -1, -1).clone()
        out[x.mean(dim=(1, 2, 3, 4)) > 0.5] = float("nan")
        return out


def test_non_finite_features_stop_the_retrieval_naming_the_backbone_and_the_video():
    from fedvssl.downstream.retrieval import NonFiniteFeatures, extract_features

    def batch(values, bad):
        imgs = torch.stack([torch.full((2, 3, 4, 8, 8), float(v)) for v in values])  # videos x clips x C T H W
        return {"imgs": imgs, "label": torch.zeros(len(values), dtype=torch.long), "bad": torch.tensor(bad)}

    names = ["v_a", "v_b", "v_c", "v_d", "v_e"]
    # Video v_c cannot be decoded (left out); v_e, the first video brighter than 0.5, is the one named.
    loader = Loader([batch([0.1, 0.2], [-1, -1]), batch([0.3, 0.4, 0.9], [2, -1, -1])], names)
    plain = torch.nn.Identity()
    feats, labels = extract_features({"plain": plain}, loader)
    assert feats["plain"].shape[0] == 4 and torch.isfinite(feats["plain"]).all()
    with pytest.raises(NonFiniteFeatures, match=r"^the pretrained backbone gives non-finite retrieval features "):
        extract_features({"random_init": plain, "pretrained": Blows()}, loader)
    with pytest.raises(NonFiniteFeatures, match=r"\(first: video v_e\)$"):
        extract_features({"pretrained": Blows()}, loader)


@pytest.mark.slow
def test_evaluating_a_checkpoint_with_negative_variances_stops_with_one_line(tmp_path, flower_env, world):
    from helpers import one_error_line, run_module

    from fedvssl.core.files import save_npz
    from fedvssl.models.r3d import R3D18

    state = {f"backbone.{k}": v.numpy() for k, v in R3D18().state_dict().items()}
    state["backbone.layer1.0.bn1.running_var"][3] = -1.0  # sqrt(var + eps) of a negative: NaN features
    save_npz(tmp_path / "bad.npz", state)
    args = ["input=tiny", "finetune=ucf101", "finetune.retrieval.num_clips=2", "runtime.eval_workers=0"]
    args += [f"checkpoint={tmp_path / 'bad.npz'}", f"dataset.root={world}", f"hydra.run.dir={tmp_path / 'run'}"]
    line = one_error_line(run_module("fedvssl.evaluate", args, flower_env))
    assert line == (
        f"fedvssl: error: {tmp_path / 'bad.npz'}: tensor backbone.layer1.0.bn1.running_var holds negative "
        "BatchNorm variances, which give non-finite features"
    )


def test_a_backbone_tensor_that_cannot_give_finite_features_is_named():
    from fedvssl.downstream.retrieval import bad_tensor

    state = {"backbone.stem.conv.weight": np.ones((2, 2), np.float32), "backbone.stem.bn.running_var": np.ones(2)}
    assert bad_tensor(state) is None
    state["backbone.stem.bn.running_var"][1] = -0.5
    assert bad_tensor(state) == (
        "tensor backbone.stem.bn.running_var holds negative BatchNorm variances, which give non-finite features"
    )
    state["backbone.stem.conv.weight"][0, 1] = np.nan  # the first bad tensor is named
    assert bad_tensor(state) == "tensor backbone.stem.conv.weight holds non-finite values (NaN or Inf)"


def test_a_partition_record_that_climbs_out_of_the_root_is_listed_as_outside_it(tmp_path):
    from fedvssl.data.client_dist import read_partition
    from fedvssl.data.screening import screen

    root = tmp_path / "videos"
    (root / "abseiling").mkdir(parents=True)
    for stem in ("v_one", "v_two"):
        (root / "abseiling" / f"{stem}.mp4").write_bytes(b"\x00" * 64)
    # A file of the name the record leads to, inside the root: a look-up by stem would find it.
    (root / "abseiling" / "passwd.mp4").write_bytes(b"\x00" * 64)
    listed = [
        {"name": "abseiling/v_one", "label": 1},
        {"name": "hopping/../../../../etc/passwd", "label": 1},
        {"name": "abseiling/v_two", "label": 1},
        {"name": "abseiling/v_gone", "label": 1},
    ]
    (tmp_path / "client_dist1.json").write_text(json.dumps(listed))
    records = read_partition(tmp_path / "client_dist1.json", root)
    assert [bool(r.path) for r in records] == [True, False, True, False]
    good, bad = screen(records, min_frames=1, probe_files=False)
    assert [r.name for r in good] == ["abseiling/v_one", "abseiling/v_two"]
    assert [(p.name, p.reason) for p in bad] == [
        ("hopping/../../../../etc/passwd", "outside the dataset root"),
        ("abseiling/v_gone", "missing"),
    ]
