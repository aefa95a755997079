"""L-DAWA's layer weights and aggregate against hand computations (fedvssl/federated/ldawa.py)."""

import math

import numpy as np
import pytest

from fedvssl.federated.ldawa import layer_cosines, layer_weights, ldawa_aggregate
from fedvssl.federated.records import from_bf16_bits, to_bf16_bits

# A global model of one 2-vector layer, one zero layer (a BatchNorm bias at init) and a counter.
GLOBAL = {
    "backbone.w": np.array([1.0, 0.0], dtype=np.float32),
    "backbone.b": np.zeros(2, dtype=np.float32),
    "backbone.n": np.array(10, dtype=np.int64),
}
# Client 1 points 60 degrees away from the global layer (cos 1/2), client 2 along it (cos 1),
# client 3 against it (cos -1, clipped to 0).
CLIENTS = [
    {"backbone.w": np.array([1.0, math.sqrt(3)], np.float32), "backbone.b": np.array([1, 2], np.float32),
     "backbone.n": np.array(12, dtype=np.int64)},
    {"backbone.w": np.array([3.0, 0.0], np.float32), "backbone.b": np.array([3, 4], np.float32),
     "backbone.n": np.array(13, dtype=np.int64)},
    {"backbone.w": np.array([-2.0, 0.0], np.float32), "backbone.b": np.array([5, 6], np.float32),
     "backbone.n": np.array(17, dtype=np.int64)},
]  # fmt: skip


def test_cosines_by_hand():
    cos = layer_cosines(CLIENTS, GLOBAL)
    np.testing.assert_allclose(cos["backbone.w"], [0.5, 1.0, 0.0], atol=1e-7)
    # The global bias is zero: no angle, every client counts fully; the counter is not a layer.
    np.testing.assert_array_equal(cos["backbone.b"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(cos["backbone.n"], [1.0, 1.0, 1.0])


def test_paper_aggregate_divides_by_the_number_of_clients():
    """w = sum_k delta_k / K * w_k: for the layer, (0.5 * [1, sqrt3] + 1 * [3, 0] + 0) / 3."""
    aggregate, weights = ldawa_aggregate(CLIENTS, GLOBAL)
    np.testing.assert_allclose(weights["backbone.w"], [0.5 / 3, 1 / 3, 0.0], atol=1e-7)
    np.testing.assert_allclose(aggregate["backbone.w"], [(0.5 + 3.0) / 3, 0.5 * math.sqrt(3) / 3], rtol=1e-6)
    np.testing.assert_allclose(aggregate["backbone.b"], [3.0, 4.0], rtol=1e-6)  # plain mean
    assert aggregate["backbone.n"].dtype == np.int64 and int(aggregate["backbone.n"]) == 14  # round(42 / 3)
    assert all(aggregate[k].dtype == GLOBAL[k].dtype for k in GLOBAL)


def test_normalized_aggregate_is_a_convex_combination_per_layer():
    aggregate, weights = ldawa_aggregate(CLIENTS, GLOBAL, normalize=True)
    np.testing.assert_allclose(weights["backbone.w"], [1 / 3, 2 / 3, 0.0], atol=1e-7)
    np.testing.assert_allclose(aggregate["backbone.w"], [1 / 3 + 2.0, math.sqrt(3) / 3], rtol=1e-6)
    for w in weights.values():
        assert w.sum() == pytest.approx(1.0)


def test_all_clients_orthogonal_under_normalize_fall_back_to_the_plain_mean():
    weights = layer_weights({"w": np.zeros(4)}, normalize=True)
    np.testing.assert_array_equal(weights["w"], [0.25] * 4)


def test_updates_give_the_same_weights_as_the_weights_they_add_up_to():
    """bfloat16 replies are updates u_k = w_k - w_g: the cosine and the aggregate are those of w_g + u_k."""
    rng = np.random.default_rng(3)
    glob = {"w": rng.normal(size=(4, 5)).astype(np.float32), "n": np.array(3, dtype=np.int64)}
    clients = [
        {"w": glob["w"] + rng.normal(scale=0.3, size=(4, 5)).astype(np.float32), "n": np.array(5, np.int64)}
        for _ in range(3)
    ]
    # What a bfloat16 reply carries: the rounded update, and the counter unchanged.
    updates = [{"w": from_bf16_bits(to_bf16_bits(c["w"] - glob["w"])), "n": c["n"]} for c in clients]
    rebuilt = [{"w": glob["w"] + u["w"], "n": u["n"]} for u in updates]
    from_updates, w_updates = ldawa_aggregate(updates, glob, updates=True)
    from_weights, w_weights = ldawa_aggregate(rebuilt, glob)
    np.testing.assert_allclose(w_updates["w"], w_weights["w"], rtol=1e-6)  # w_g + u_k in float64 vs float32
    np.testing.assert_allclose(from_updates["w"], from_weights["w"], rtol=1e-5)
    assert int(from_updates["n"]) == 5


def test_cosine_is_computed_per_layer_not_over_the_model():
    """Two layers: client 1 agrees with the global model on layer a, client 2 on layer b."""
    glob = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([0.0, 1.0], np.float32)}
    c1 = {"a": np.array([2.0, 0.0], np.float32), "b": np.array([1.0, 1.0], np.float32)}
    c2 = {"a": np.array([1.0, 1.0], np.float32), "b": np.array([0.0, 5.0], np.float32)}
    cos = layer_cosines([c1, c2], glob)
    np.testing.assert_allclose(cos["a"], [1.0, 1 / math.sqrt(2)], rtol=1e-7)
    np.testing.assert_allclose(cos["b"], [1 / math.sqrt(2), 1.0], rtol=1e-7)


def test_large_layers_are_summed_in_chunks_to_the_same_cosine():
    rng = np.random.default_rng(0)
    g = rng.normal(size=300_001).astype(np.float32)  # more than two chunks
    c = (g + rng.normal(scale=0.5, size=g.size)).astype(np.float32)
    g64, c64 = g.astype(np.float64), c.astype(np.float64)
    expected = g64 @ c64 / (np.linalg.norm(g64) * np.linalg.norm(c64))
    assert layer_cosines([{"w": c}], {"w": g})["w"][0] == pytest.approx(expected, rel=1e-12)


def test_no_replies_is_an_error():
    with pytest.raises(ValueError, match="nothing to aggregate"):
        ldawa_aggregate([], GLOBAL)
