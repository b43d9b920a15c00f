import numpy as np
import pytest

from sidyp_prod.prior import (
    CERTAIN,
    DOMINANT,
    UNCERTAIN,
    boundary_swaps,
    candidates,
    knn_vote,
    refine_weights,
)


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


def test_boundary_swaps_trade_the_edge_neighbours_whose_labels_differ():
    distances = np.array([
        [1.0, 1.5, 1.999, 2.0, 2.001, 3.0],  # an edge: 1.999 (label 1) against 2.0 and 2.001
        [1.0, 1.2, 1.4, 2.0, 2.1, 2.2],  # the k-th far from the next: no trade
        [1.0, 1.5, 1.999, 2.0, np.inf, np.inf],  # same labels across the edge: no trade
        [1.0, 1.5, np.inf, np.inf, np.inf, np.inf],  # fewer than k neighbours: no trade
    ])
    labels = np.array([[0, 0, 1, 2, 1, 0], [0, 1, 2, 0, 1, 2], [0, 1, 2, 2, -1, -1],
                       [0, 1, -1, -1, -1, -1]])
    rows, traded_d, traded_l = boundary_swaps(distances, labels, k=3, band=0.01)
    # Only 1.999 <-> 2.0 differ in label (2.001 has label 1, as the neighbour it would replace).
    np.testing.assert_array_equal(rows, [0])
    np.testing.assert_array_equal(traded_d, [[1.0, 1.5, 2.0]])
    np.testing.assert_array_equal(traded_l, [[0, 0, 2]])
    assert len(boundary_swaps(distances, labels, k=3, band=0.0001)[0]) == 0
    wide, _, _ = boundary_swaps(distances, labels, k=3, band=0.5)
    assert set(wide.tolist()) == {0, 1, 2}


def test_prior_vote_trades_move_one_branch_vote_of_the_average():
    from sidyp_prod.diffusion import ReverseSchedule
    from sidyp_prod.neighbors import NeighborIndex
    from sidyp_prod.refinement import BOUNDARY_EXTRA, RefineSettings, prior_from_neighbors

    rng = np.random.default_rng(2)
    reference = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(60, 8)).astype(np.float32)
    indexes = [NeighborIndex(reference[i::2], rng.integers(0, 3, 150), use_gpu=False)
               for i in range(2)]
    settings = RefineSettings(3, 5.0, ReverseSchedule.build(10, 3), 2, 5, 0.9, 0.8, 0)
    plain = prior_from_neighbors(queries, indexes, settings)
    band = 0.05
    checked = prior_from_neighbors(queries, indexes, settings, boundary_band=band)
    assert plain.trades is None
    np.testing.assert_array_equal(checked.vote, plain.vote)  # the k nearest are the same
    np.testing.assert_array_equal(checked.weights, plain.weights)
    searched = [index.search(queries, 5 + BOUNDARY_EXTRA) for index in indexes]
    votes = [knn_vote(d[:, :5], lab[:, :5], 3) for d, lab in searched]
    expected_rows, expected_votes = [], []
    for b, (d, lab) in enumerate(searched):
        for r in range(len(queries)):
            for x in range(5):
                for y in range(5, 5 + BOUNDARY_EXTRA):
                    if (d[r, x] >= d[r, 5] - band * d[r, 4]
                            and d[r, y] <= d[r, 4] + band * d[r, 4] and lab[r, x] != lab[r, y]):
                        sel = [j for j in range(5) if j != x] + [y]
                        moved = [v[r] for v in votes]
                        moved[b] = knn_vote(d[r:r + 1, sel], lab[r:r + 1, sel], 3)[0]
                        expected_rows.append(r)
                        expected_votes.append(np.mean(moved, axis=0))
    assert len(expected_rows) > 5
    got = sorted(zip(checked.trades.rows.tolist(), checked.trades.votes.round(6).tolist(),
                     strict=True))
    want = sorted(zip(expected_rows, np.round(expected_votes, 6).tolist(), strict=True))
    assert len(got) == len(want)
    for (r1, v1), (r2, v2) in zip(got, want, strict=True):
        assert r1 == r2
        np.testing.assert_allclose(v1, v2, atol=1e-5)


def test_the_leave_self_out_vote_is_each_rows_vote_among_the_other_clean_rows():
    """Brute force: per branch, the k nearest clean-marked rows other than the row itself vote
    (knn_vote), and the branches' votes are averaged."""
    from sidyp_prod.refinement import leave_self_out_vote

    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(60, 8)).astype(np.float32)
    embeddings[10:13] = embeddings[5]  # exact duplicates vote for each other, not for themselves
    labels = rng.integers(0, 4, 60)
    clean = rng.random((3, 60)) < 0.7
    clean[2] = False
    clean[2, [5, 11, 40]] = True  # a branch with fewer clean rows than k + 1
    k = 5
    got = leave_self_out_vote(embeddings, labels, clean, k, 4)
    expected = np.zeros((60, 4))
    for marks in clean:
        for row in range(60):
            others = np.flatnonzero(marks & (np.arange(60) != row))
            d = np.sqrt(((embeddings[others] - embeddings[row]) ** 2).sum(1))
            nearest = np.argsort(d, kind="stable")[:k]
            expected[row] += knn_vote(d[nearest][None], labels[others][nearest][None], 4)[0]
    np.testing.assert_allclose(got, expected / 3, atol=1e-5)
