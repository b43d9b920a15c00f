"""Calibrating the refined distributions without gold labels.

The noise-ratio estimate says what fraction of the given labels is right (1 - rho). The mean
probability that a given label is right (the mean ``label_score``) should match it, which fixes
one temperature for the whole distribution: calibration-in-the-large, from the data alone.
"""

from __future__ import annotations

import numpy as np

FLOOR = 1e-4  # keeps every class reachable under tempering (log 0 would pin it at 0)
BOUNDS = (0.05, 50.0)


def temper(dist: np.ndarray, temperature: float) -> np.ndarray:
    """p_T proportional to p^(1/T), after a small floor so that no class is impossible."""
    logp = np.log(dist * (1 - FLOOR * dist.shape[-1]) + FLOOR) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=-1, keepdims=True)


def mean_given_probability(dist: np.ndarray, given: np.ndarray, temperature: float) -> float:
    labelled = given >= 0
    tempered = temper(dist[labelled], temperature)
    return float(tempered[np.arange(len(tempered)), given[labelled]].mean())


def fit_temperature(dist: np.ndarray, given: np.ndarray, target: float,
                    iterations: int = 60) -> float:
    """The temperature at which the mean probability of the given labels equals ``target``.

    Bisection on log T; the result is clipped to BOUNDS when the target is out of reach.
    """
    if not (given >= 0).any():
        return 1.0
    lo, hi = np.log(BOUNDS[0]), np.log(BOUNDS[1])
    at_lo = mean_given_probability(dist, given, np.exp(lo))
    at_hi = mean_given_probability(dist, given, np.exp(hi))
    increasing = at_hi > at_lo
    for _ in range(iterations):
        mid = (lo + hi) / 2
        value = mean_given_probability(dist, given, np.exp(mid))
        if (value < target) == increasing:
            lo = mid
        else:
            hi = mid
    return float(np.exp((lo + hi) / 2))


def likelihood_temperature(dist: np.ndarray, given: np.ndarray, iterations: int = 60) -> float:
    """The temperature that maximises the mean log probability of the given labels.

    For a distribution of p(given label | x), such as the neighbours' vote, this calibrates it to
    the labels it predicts. Golden-section search on log T (the log likelihood is unimodal in
    1/T); 1.0 where no row is labelled.
    """
    labelled = given >= 0
    if not labelled.any():
        return 1.0
    dist, rows = dist[labelled], np.arange(int(labelled.sum()))

    def loss(log_t: float) -> float:
        return float(-np.log(temper(dist, np.exp(log_t))[rows, given[labelled]]).mean())

    lo, hi = np.log(BOUNDS[0]), np.log(BOUNDS[1])
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(iterations):
        if loss_a < loss_b:
            hi, b, loss_b = b, a, loss_a
            a = hi - ratio * (hi - lo)
            loss_a = loss(a)
        else:
            lo, a, loss_a = a, b, loss_b
            b = lo + ratio * (hi - lo)
            loss_b = loss(b)
    return float(np.exp((lo + hi) / 2))
