import numpy as np

from sidyp_prod.noise import (
    centroid_distances,
    estimate_noise_ratio,
    mark_noisy,
    noise_ratio_interval,
    noise_scores,
)


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


def _bimodal(rng: np.random.Generator, n: int, ratio: float) -> np.ndarray:
    noisy = round(n * ratio)
    return np.concatenate([rng.normal(1.0, 0.2, n - noisy), rng.normal(3.0, 0.3, noisy)])


def test_noise_interval_covers_the_truth_and_narrows_with_rows():
    rng = np.random.default_rng(1)
    widths = []
    for n in (200, 3000):
        scores = _bimodal(rng, n, 0.3)[None, :]
        low, high = noise_ratio_interval(scores, np.ones(n, dtype=bool), draws=100)
        assert low <= 0.3 <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_noise_interval_spans_the_disagreeing_held_out_estimate():
    rng = np.random.default_rng(2)
    n = 2000
    scores = _bimodal(rng, n, 0.3)[None, :]
    labelled = np.ones(n, dtype=bool)
    mixture_only = noise_ratio_interval(scores, labelled, draws=100)
    p_given = np.full(n, 0.5)  # the held-out classifiers say 0.5 of the labels are wrong
    low, high = noise_ratio_interval(scores, labelled, p_given, draws=100)
    assert high > 0.45 and abs(low - mixture_only[0]) < 0.02
    assert mixture_only[1] < 0.35
