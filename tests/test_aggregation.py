"""FedVSSL's server arithmetic against hand computations."""

import itertools
import math

import numpy as np
import pytest

from fedvssl.federated.aggregation import beta_step, client_weights, weighted_average

# The worked example of the reference (fedvssl-algorithm.md, section 2.3).
LOSSES = [0.5, 0.6, 0.7, 0.8, 0.9]
COUNTS = [2300, 2255, 2314, 2280, 2270]
SOFTMAX = [0.24186, 0.21884, 0.19801, 0.17917, 0.16212]
SHARES = [0.20142, 0.19748, 0.20264, 0.19967, 0.19879]
MIXED_09 = [0.23781, 0.21670, 0.19848, 0.18122, 0.16579]


def hand_weights(losses, counts, alpha):
    exp = [math.exp(-x) for x in losses]
    soft = [e / sum(exp) for e in exp]
    return [alpha * s + (1 - alpha) * n / sum(counts) for s, n in zip(soft, counts, strict=True)]


@pytest.mark.parametrize(("alpha", "expected"), [(0.0, SHARES), (1.0, SOFTMAX), (0.9, MIXED_09)])
def test_weights_match_reference_table(alpha, expected):
    np.testing.assert_allclose(client_weights(LOSSES, COUNTS, alpha), expected, atol=1e-5)


def test_weights_are_stable_for_large_losses():
    w = client_weights([1000.0, 1001.0], [1, 1], 1.0)
    np.testing.assert_allclose(w, [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))])


def test_alpha_one_ignores_counts_and_alpha_zero_ignores_losses():
    np.testing.assert_allclose(client_weights([0.3, 0.3], [1, 99], 1.0), [0.5, 0.5])
    np.testing.assert_allclose(client_weights([0.1, 5.0], [1, 3], 0.0), [0.25, 0.75])


@pytest.mark.parametrize("bad", [[float("nan"), 1.0], [float("inf"), 1.0]])
def test_non_finite_losses_are_rejected(bad):
    with pytest.raises(ValueError, match="finite"):
        client_weights(bad, [1, 1], 0.5)


def _states(rng, k):
    return [
        {
            "backbone.w": rng.normal(size=(3, 2)).astype(np.float32),
            "backbone.bn.num_batches_tracked": np.array(rng.integers(0, 100), dtype=np.int64),
        }
        for _ in range(k)
    ]


@pytest.mark.parametrize(("alpha", "beta"), list(itertools.product([0.0, 0.9, 1.0], [0, 1])))
def test_three_rounds_against_hand_computation(alpha, beta):
    """Rounds 1-3: A_t = sum w_k theta_k; with beta=1, G_t = A_t/2 + G_{t-1}/2 from round 2 on."""
    rng = np.random.default_rng(0)
    previous = None
    aggregates = []
    for rnd in (1, 2, 3):
        states = _states(rng, 3)
        losses, counts = rng.uniform(0.2, 2.0, 3).tolist(), rng.integers(5, 50, 3).tolist()
        w = hand_weights(losses, counts, alpha)
        hand = sum(wk * s["backbone.w"].astype(np.float64) for wk, s in zip(w, states, strict=True))
        aggregates.append(hand)
        out = weighted_average(states, client_weights(losses, counts, alpha))
        if beta and rnd >= 2:
            out = beta_step(out, previous)
        previous = out
        assert out["backbone.w"].dtype == np.float32
        assert out["backbone.bn.num_batches_tracked"].dtype == np.int64
    a1, a2, a3 = aggregates
    expected = 0.5 * a3 + 0.25 * a2 + 0.25 * a1 if beta else a3
    np.testing.assert_allclose(previous["backbone.w"], expected, rtol=1e-5, atol=1e-6)


def test_weighted_average_rejects_mismatched_keys():
    with pytest.raises(ValueError, match="different tensors"):
        weighted_average([{"a": np.zeros(2)}, {"b": np.zeros(2)}], [0.5, 0.5])
