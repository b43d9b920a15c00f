import numpy as np
import pytest

from sidyp_prod.calibration import fit_temperature, mean_given_probability, temper


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
