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


def test_neighbour_search_does_not_depend_on_the_query_batch_or_threads():
    import faiss

    from sidyp_prod.neighbors import NeighborIndex

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(500, 48)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    queries = reference[:40] + 0.05 * rng.normal(size=(40, 48)).astype(np.float32)
    index = NeighborIndex(reference, rng.integers(0, 4, 500), use_gpu=False)
    distances, labels = index.search(queries, 10)
    # The true distances, nearest first.
    expected = np.sort(np.linalg.norm(queries[:, None, :].astype(np.float64)
                                      - reference[None].astype(np.float64), axis=-1), axis=1)
    np.testing.assert_allclose(distances, expected[:, :10], rtol=1e-12)
    threads = faiss.omp_get_max_threads()
    try:
        for n in (1, 2):
            faiss.omp_set_num_threads(n)
            one_by_one = [index.search(queries[i : i + 1], 10) for i in range(len(queries))]
            # Bit-identical: a resumed or differently chunked refine must write the same bytes.
            np.testing.assert_array_equal(np.concatenate([d for d, _ in one_by_one]), distances)
            np.testing.assert_array_equal(np.concatenate([lab for _, lab in one_by_one]), labels)
    finally:
        faiss.omp_set_num_threads(threads)
    # Fewer references than k: padded with infinite distances and label -1.
    small = NeighborIndex(reference[:3], np.arange(3), use_gpu=False)
    d, lab = small.search(queries[:2], 5)
    assert np.isinf(d[:, 3:]).all() and (lab[:, 3:] == -1).all() and (lab[:, :3] >= 0).all()


def test_equally_distant_references_are_chosen_by_id_whatever_the_batch():
    from sidyp_prod.neighbors import NeighborIndex

    rng = np.random.default_rng(1)
    unique = rng.normal(size=(200, 16)).astype(np.float32)
    # 40 copies of one vector (duplicate texts), scattered among the others.
    reference = np.concatenate([unique, np.repeat(unique[:1], 40, axis=0)])
    order = rng.permutation(len(reference))
    reference = reference[order]
    copies = np.flatnonzero((reference == unique[0]).all(axis=1))
    labels = np.arange(len(reference)) % 3
    index = NeighborIndex(reference, labels, use_gpu=False)
    queries = np.concatenate([unique[:1] + 0.01, rng.normal(size=(20, 16)).astype(np.float32)])
    distances, found = index.search(queries, 10)
    # Ties at the k-th neighbour go to the lowest ids: the same rows in any batch.
    np.testing.assert_array_equal(found[0], labels[np.sort(copies)[:10]])
    for i in range(len(queries)):
        d, lab = index.search(queries[i : i + 1], 10)
        np.testing.assert_array_equal(d[0], distances[i])
        np.testing.assert_array_equal(lab[0], found[i])
