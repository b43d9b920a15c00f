import numpy as np
import pytest

from sidyp_prod.calibration import (
    fit_temperature,
    likelihood_temperature,
    mean_given_probability,
    temper,
)


def test_temper_keeps_the_argmax_and_flattens_or_sharpens():
    p = np.array([[0.7, 0.2, 0.1]])
    assert temper(p, 1.0) == pytest.approx(p, abs=1e-3)
    assert temper(p, 3.0).max() < 0.7 < temper(p, 0.5).max()
    assert temper(p, 3.0).argmax() == temper(p, 0.5).argmax() == 0


def test_fit_temperature_hits_the_target_mean_label_score():
    rng = np.random.default_rng(0)
    dist = rng.dirichlet(np.full(4, 0.2), size=500)  # sharp, overconfident distributions
    given = np.where(rng.random(500) < 0.4, dist.argmax(1), rng.integers(0, 4, 500))
    given[:10] = -1  # unlabeled rows are ignored
    t = fit_temperature(dist, given, target=0.4)
    assert t > 1.0  # overconfident: flattened
    assert mean_given_probability(dist, given, t) == pytest.approx(0.4, abs=1e-3)


def test_likelihood_temperature_undoes_a_sharpening():
    """Labels drawn from q, reported as q sharpened (q^3, normalised): the fit finds T = 3."""
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.full(5, 1.0), size=4000)
    given = np.array([rng.choice(5, p=row) for row in q])
    sharp = temper(q, 1 / 3)
    assert likelihood_temperature(sharp, given) == pytest.approx(3.0, rel=0.08)
    assert likelihood_temperature(q, given) == pytest.approx(1.0, rel=0.08)
    assert likelihood_temperature(q, np.full(len(q), -1)) == 1.0  # nothing labelled
