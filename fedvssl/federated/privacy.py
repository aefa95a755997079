"""The (epsilon, delta) a run with central differential privacy has spent, by Google's ``dp-accounting``.

Client-level DP of the backbone updates: each round the server (or each client) clips every
client's update to ``clipping_norm`` C, and the server adds Gaussian noise of standard
deviation ``noise_multiplier * C / m`` to the average of the ``m = num_sampled_clients``
clipped updates (Flower's ``DifferentialPrivacy*FixedClipping`` wrappers). One round is
thus a Gaussian mechanism on the round's sample; the rounds compose. The accountant is
dp-accounting's Rényi-DP accountant (``dp_accounting.rdp.RdpAccountant``: Mironov 2017;
Mironov, Talwar, Zhang 2019 for Poisson sampling; Wang, Balle, Kasiviswanathan 2019 for
sampling without replacement), with its conversion of RDP to (epsilon, delta).

Two ways to count a round (``sampling``):

- ``without_replacement`` (the runs' default): what the strategy does, ``m`` of ``N``
  clients drawn uniformly without replacement each round, under the replace-one-client
  relation (``N`` is public). Replacing one client's data moves the sum of the clipped
  updates by up to ``2C``, so the noise is ``noise_multiplier / 2`` times that sensitivity.
  The amplification by sampling holds only if the draw is unknown to the adversary: the
  strategy's draw is reproducible from ``seed``, so keep the seed secret, or read the
  ``m = N`` case (no amplification) as the guarantee.
- ``poisson``: every client takes part with probability ``q = m / N`` independently, under
  the add-or-remove-one-client relation; a sensitivity of ``C``. This is how most papers
  account for DP-FedAvg (McMahan et al., ICLR 2018), for comparison with them; it is not a
  bound for a fixed-size draw.

A round whose average took fewer than ``m`` replies (failed clients) had relatively less
noise: its noise multiplier is ``noise_multiplier * replies / m`` (:func:`round_multiplier`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import dp_accounting
from dp_accounting import rdp

WITHOUT_REPLACEMENT, POISSON = "without_replacement", "poisson"
SAMPLINGS = (WITHOUT_REPLACEMENT, POISSON)
# RDP orders: the library's default ones, whole orders only where the draw is without
# replacement (its bound at fractional orders is an interpolation that fails to converge
# for large sampling rates, with a warning per order, and is never the tightest).
_ORDERS = tuple(float(o) for o in rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
_WHOLE_ORDERS = tuple(o for o in _ORDERS if o.is_integer())


def check_privacy(
    noise_multiplier: float, clients_per_round: int, num_clients: int, delta: float, sampling: str
) -> None:
    """The accountant's inputs, each named in one line if it is out of range."""
    if not (isinstance(noise_multiplier, int | float) and not isinstance(noise_multiplier, bool)) or not (
        noise_multiplier > 0
    ):
        raise ValueError(f"noise_multiplier={noise_multiplier} must be a number > 0 to spend a finite epsilon")
    if not (isinstance(num_clients, int) and isinstance(clients_per_round, int) and clients_per_round >= 1):
        raise ValueError(f"clients_per_round={clients_per_round} must be an integer >= 1")
    if clients_per_round > num_clients:
        raise ValueError(f"clients_per_round={clients_per_round} must be at most num_clients={num_clients}")
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ValueError(f"delta={delta} must be in (0, 1)")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling={sampling!r} must be one of {', '.join(SAMPLINGS)}")


def round_multiplier(noise_multiplier: float, replies: int, clients_per_round: int) -> float:
    """The noise multiplier of a round averaged over ``replies`` clipped updates, its noise calibrated for ``m``."""
    if replies <= 0:
        raise ValueError(f"a round with {replies} replies releases nothing")
    return noise_multiplier * min(replies, clients_per_round) / clients_per_round


def _round_event(noise_multiplier: float, clients_per_round: int, num_clients: int, sampling: str):
    if sampling == POISSON:
        gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
        return dp_accounting.PoissonSampledDpEvent(clients_per_round / num_clients, gaussian)
    # Replace-one: the sensitivity is 2C, the noise noise_multiplier * C.
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    return dp_accounting.SampledWithoutReplacementDpEvent(num_clients, clients_per_round, gaussian)


def spent(
    multipliers: Sequence[float],
    clients_per_round: int,
    num_clients: int,
    delta: float,
    sampling: str = WITHOUT_REPLACEMENT,
) -> float:
    """Epsilon after the rounds whose noise multipliers are ``multipliers`` (one per round; none: 0)."""
    if not multipliers:
        return 0.0
    for z in multipliers:
        check_privacy(z, clients_per_round, num_clients, delta, sampling)
    if sampling == POISSON:
        accountant = rdp.RdpAccountant(_ORDERS, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    else:
        accountant = rdp.RdpAccountant(_WHOLE_ORDERS, dp_accounting.NeighboringRelation.REPLACE_ONE)
    # Rounds of the same multiplier compose as one event with a count: the subsampled
    # Gaussian's RDP is computed once per distinct multiplier, not once per round.
    for z, count in sorted(Counter(float(z) for z in multipliers).items()):
        accountant.compose(_round_event(z, clients_per_round, num_clients, sampling), count)
    return float(accountant.get_epsilon(delta))


def epsilon(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    clients_per_round: int,
    num_clients: int,
    sampling: str = WITHOUT_REPLACEMENT,
) -> float:
    """Epsilon after ``rounds`` rounds of ``clients_per_round`` of ``num_clients`` clients (sampling rate m / N)."""
    if not (isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"rounds={rounds} must be an integer >= 0")
    return spent([noise_multiplier] * rounds, clients_per_round, num_clients, delta, sampling)
