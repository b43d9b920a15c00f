"""The dynamic prior's starting point: candidates and weights from a distance-weighted kNN vote."""

from __future__ import annotations

import numpy as np

CERTAIN, DOMINANT, UNCERTAIN = 0, 1, 2
KIND_NAMES = ("certain", "dominant", "uncertain")
EXACT_MATCH = 1e-6  # distances below this count as the row itself (or an exact duplicate)


def knn_vote(distances: np.ndarray, neighbor_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Distance-weighted kNN class distribution, (B, K) L2 distances and labels -> (B, C).

    Each neighbour votes with weight 1/distance. As in scikit-learn, exact matches take all the
    weight, so a clean-marked row that finds itself keeps its own label. Labels < 0 are padding
    (fewer than K neighbours) and do not vote. Rows without any neighbour get a uniform vote.
    """
    distances = np.asarray(distances, dtype=np.float64)
    labels = np.asarray(neighbor_labels)
    valid = labels >= 0
    exact = valid & (distances < EXACT_MATCH)
    with np.errstate(divide="ignore"):
        weights = np.where(valid, 1.0 / np.maximum(distances, EXACT_MATCH), 0.0)
    has_exact = exact.any(axis=1, keepdims=True)
    weights = np.where(has_exact, exact.astype(np.float64), weights)
    votes = np.zeros((labels.shape[0], n_classes), dtype=np.float64)
    rows = np.broadcast_to(np.arange(labels.shape[0])[:, None], labels.shape)
    np.add.at(votes, (rows[valid], labels[valid]), weights[valid])
    total = votes.sum(axis=1, keepdims=True)
    uniform = np.full_like(votes, 1.0 / n_classes)
    return np.where(total > 0, votes / np.where(total > 0, total, 1.0), uniform)


def boundary_swaps(
    distances: np.ndarray, neighbor_labels: np.ndarray, k: int, band: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The neighbour sets one trade away at the edge of a row's k nearest.

    ``distances`` and ``neighbor_labels`` are (B, K') with K' > k, nearest first. A neighbour
    among the k nearest within ``band`` x (the k-th's distance) of the (k+1)-th's trades places
    with one beyond the k within as much of the k-th's, where their labels differ (a trade of
    equal labels leaves the vote as it is). Returns the rows (n,) and each trade's k distances
    and labels (n, k), for :func:`knn_vote`.
    """
    d = np.asarray(distances, dtype=np.float64)
    labels = np.asarray(neighbor_labels)
    reach = band * d[:, k - 1 : k]
    with np.errstate(invalid="ignore"):  # inf - inf where a row has fewer than k neighbours
        inside = (d[:, :k] >= d[:, k : k + 1] - reach) & (labels[:, :k] >= 0)
    outside = (d[:, k:] <= d[:, k - 1 : k] + reach) & (labels[:, k:] >= 0)
    differ = labels[:, :k, None] != labels[:, None, k:]
    rows, out_of, into = np.nonzero(inside[:, :, None] & outside[:, None, :] & differ)
    swapped_d, swapped_l = d[rows, :k].copy(), labels[rows, :k].copy()
    swapped_d[np.arange(len(rows)), out_of] = d[rows, k + into]
    swapped_l[np.arange(len(rows)), out_of] = labels[rows, k + into]
    return rows, swapped_d, swapped_l


def candidates(
    p: np.ndarray, tau_certain: float, tau_dominant: float
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into certain / dominant / uncertain and return (weights (B, C), kind (B,)).

    certain: max p >= tau_certain -> one-hot; dominant: the two largest sum to >= tau_dominant ->
    those two, renormalised; uncertain: every class with p > 0 keeps its weight.
    """
    p = np.asarray(p, dtype=np.float64)
    order = np.argsort(-p, axis=1, kind="stable")
    top1 = np.take_along_axis(p, order[:, :1], axis=1)[:, 0]
    top2 = np.take_along_axis(p, order[:, 1:2], axis=1)[:, 0] if p.shape[1] > 1 else 0 * top1
    kind = np.full(len(p), UNCERTAIN, dtype=np.int8)
    kind[top1 + top2 >= tau_dominant] = DOMINANT
    kind[top1 >= tau_certain] = CERTAIN
    weights = p.copy()
    rows = np.arange(len(p))
    certain = kind == CERTAIN
    weights[certain] = 0.0
    weights[rows[certain], order[certain, 0]] = 1.0
    dominant = kind == DOMINANT
    keep = np.zeros_like(p, dtype=bool)
    keep[rows[dominant], order[dominant, 0]] = True
    keep[rows[dominant], order[dominant, 1]] = True
    weights[dominant] = np.where(keep[dominant], p[dominant], 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights.astype(np.float32), kind


def refine_weights(weights: np.ndarray, predicted: np.ndarray, samples: int) -> np.ndarray:
    """One iterative-refinement update: a predicted class that is a candidate gains weight.

    w_c <- w_c + (1 - w_c) / n_s for the predicted class c if w_c > 0, then renormalise.
    """
    weights = np.array(weights, dtype=np.float32, copy=True)
    rows = np.arange(len(weights))
    current = weights[rows, predicted]
    hit = current > 0
    weights[rows[hit], predicted[hit]] = current[hit] + (1.0 - current[hit]) / samples
    return weights / weights.sum(axis=1, keepdims=True)
