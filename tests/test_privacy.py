"""The epsilon report (fedvssl/federated/privacy.py) against computations made another way.

- Without sampling, T Gaussian rounds of multiplier z are one Gaussian mechanism of
  multiplier z / sqrt(T), whose exact (epsilon, delta) curve has a closed form (Balle and
  Wang, ICML 2018, Theorem 8): delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu),
  mu = sqrt(T) / z. RDP's epsilon is an upper bound of the exact one, and close to it.
- With Poisson sampling, dp-accounting's privacy-loss-distribution accountant (a numerical
  method unlike RDP, and tighter) gives a lower epsilon, again close.
"""

import math

import pytest
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent
from dp_accounting.pld import PLDAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from fedvssl.federated.privacy import POISSON, WITHOUT_REPLACEMENT, epsilon, round_multiplier, spent

DELTA = 1e-5


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon of a Gaussian mechanism of sensitivity / sigma = mu at ``delta`` (closed form)."""

    def excess(eps: float) -> float:
        return norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu) - delta

    return brentq(excess, 0.0, 200.0)


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 20), (2.0, 100), (5.0, 540)])
def test_no_sampling_bounds_the_exact_gaussian_epsilon(z, rounds):
    exact = exact_gaussian_epsilon(math.sqrt(rounds) / z, DELTA)
    ours = epsilon(z, rounds, DELTA, clients_per_round=10, num_clients=10, sampling=POISSON)
    assert exact <= ours <= 1.3 * exact, (exact, ours)


def test_replace_one_doubles_the_sensitivity():
    """All clients every round, replace-one: the Gaussian of multiplier z / 2 (a replaced client moves it by 2C)."""
    exact = exact_gaussian_epsilon(2 * math.sqrt(50) / 3.0, DELTA)
    ours = epsilon(3.0, 50, DELTA, clients_per_round=4, num_clients=4, sampling=WITHOUT_REPLACEMENT)
    assert exact <= ours <= 1.3 * exact, (exact, ours)


@pytest.mark.parametrize(("z", "q", "rounds"), [(1.1, 0.01, 1000), (2.0, 0.1, 200)])
def test_poisson_sampling_against_the_pld_accountant(z, q, rounds):
    pld = PLDAccountant()
    pld.compose(PoissonSampledDpEvent(q, GaussianDpEvent(z)), rounds)
    tight = pld.get_epsilon(DELTA)
    ours = epsilon(z, rounds, DELTA, clients_per_round=round(q * 1000), num_clients=1000, sampling=POISSON)
    assert tight <= ours <= 1.5 * tight, (tight, ours)


def test_sampling_fewer_clients_spends_less():
    everyone = epsilon(1.0, 100, DELTA, clients_per_round=10, num_clients=10)
    some = epsilon(1.0, 100, DELTA, clients_per_round=2, num_clients=10)
    assert 0 < some < everyone


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    eps = [epsilon(1.0, t, DELTA, 2, 10) for t in (1, 10, 100)]
    assert 0 < eps[0] < eps[1] < eps[2]
    assert epsilon(4.0, 100, DELTA, 2, 10) < eps[2]
    assert epsilon(1.0, 0, DELTA, 2, 10) == 0.0


def test_rounds_with_failed_clients_spend_more():
    """3 of 4 replies averaged with noise calibrated for 4: the round's multiplier is z * 3/4."""
    assert round_multiplier(2.0, 3, 4) == pytest.approx(1.5)
    assert round_multiplier(2.0, 4, 4) == 2.0
    full = spent([2.0, 2.0], 2, 10, DELTA)
    assert full == pytest.approx(epsilon(2.0, 2, DELTA, 2, 10))
    assert full < spent([2.0, 1.5], 2, 10, DELTA) < spent([1.5, 1.5], 2, 10, DELTA)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 5, DELTA, 2, 10), "noise_multiplier=0.0"),
        ((1.0, 5, 1.5, 2, 10), "delta=1.5"),
        ((1.0, 5, DELTA, 11, 10), "clients_per_round=11"),
        ((1.0, -1, DELTA, 2, 10), "rounds=-1"),
    ],
)
def test_bad_inputs_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        epsilon(*args)
