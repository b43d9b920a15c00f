import numpy as np
import pytest

from sidyp_prod.prior import CERTAIN, DOMINANT, UNCERTAIN, candidates, knn_vote, refine_weights


def test_knn_vote_weights_neighbours_by_inverse_distance():
    p = knn_vote(np.array([[1.0, 2.0, 4.0]]), np.array([[0, 1, 1]]), 3)
    w = np.array([1.0, 0.5 + 0.25, 0.0])
    np.testing.assert_allclose(p[0], w / w.sum())


def test_an_exact_match_takes_all_the_weight():
    p = knn_vote(np.array([[0.0, 0.1, 0.1]]), np.array([[2, 0, 0]]), 3)
    np.testing.assert_allclose(p[0], [0, 0, 1])


def test_padding_neighbours_do_not_vote_and_empty_rows_are_uniform():
    p = knn_vote(np.array([[1.0, np.inf], [np.inf, np.inf]]), np.array([[1, -1], [-1, -1]]), 2)
    np.testing.assert_allclose(p, [[0, 1], [0.5, 0.5]])


def test_candidates_certain_dominant_uncertain():
    p = np.array([[0.95, 0.05, 0, 0], [0.5, 0.35, 0.15, 0], [0.4, 0.3, 0.2, 0.1]])
    w, kind = candidates(p, 0.9, 0.8)
    assert kind.tolist() == [CERTAIN, DOMINANT, UNCERTAIN]
    np.testing.assert_allclose(w[0], [1, 0, 0, 0])
    np.testing.assert_allclose(w[1], [0.5 / 0.85, 0.35 / 0.85, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(w[2], p[2], rtol=1e-6)


def test_refinement_raises_a_predicted_candidate_only():
    w = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], dtype=np.float32)
    out = refine_weights(w, np.array([0, 2]), samples=4)
    raised = np.array([0.5 + 0.5 / 4, 0.5])
    np.testing.assert_allclose(out[0], [*(raised / raised.sum()), 0], rtol=1e-6)
    np.testing.assert_allclose(out[1], w[1])  # class 2 is not a candidate: unchanged
    assert out.sum(1) == pytest.approx([1, 1])
