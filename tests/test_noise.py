import numpy as np

from sidyp_prod.noise import centroid_distances, estimate_noise_ratio, mark_noisy, noise_scores


def test_centroid_distances():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0]])
    d = centroid_distances(x, np.array([0, 0, -1]), 2)
    np.testing.assert_allclose(d[:, 0], [1, 1, 9])
    assert np.isinf(d[:, 1]).all()


def test_scores_are_mean_plus_std_over_epochs():
    own = np.array([[1.0, 2.0], [3.0, 2.0]])
    np.testing.assert_allclose(noise_scores(own), [2.0 + 1.0, 2.0])


def test_noise_ratio_estimate_finds_the_far_component():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(1.0, 0.2, 700), rng.normal(3.0, 0.3, 300)])
    assert abs(estimate_noise_ratio(scores) - 0.3) < 0.05


def test_mark_noisy_takes_the_highest_scores_and_all_unlabelled_rows():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.0])
    labelled = np.array([True, True, True, True, False])
    np.testing.assert_array_equal(
        mark_noisy(scores, 0.5, labelled), [False, True, False, True, True]
    )
