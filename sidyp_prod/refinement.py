"""Refining a batch of rows: dynamic prior, iterative refinement, marginalised prediction.

Pure numpy over a :class:`~sidyp_prod.backends.ModelBackend`; nothing here knows which runtime
computes the encoder or the denoiser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from .backends.base import EncodedBatch, ModelBackend
from .calibration import temper
from .decision import (
    DecisionRule,
    calibrate,
    calibration_targets,
    decide,
    divide_by_label_shares,
    fit_calibration,
)
from .diffusion import ReverseSchedule, row_noise, simplex, softmax
from .neighbors import NeighborIndex
from .prior import CERTAIN, KIND_NAMES, boundary_swaps, candidates, knn_vote, refine_weights
from .trusted import PlattScaling


@dataclass(frozen=True)
class RefineSettings:
    n_classes: int
    scale: float
    schedule: ReverseSchedule
    refine_samples: int
    knn_k: int
    tau_certain: float
    tau_dominant: float
    seed: int

    @classmethod
    def from_config(cls, config: Any, n_classes: int) -> RefineSettings:
        return cls(
            n_classes=n_classes,
            scale=config.simplex_scale,
            schedule=ReverseSchedule.from_config(config),
            refine_samples=config.refine_samples,
            knn_k=config.knn_k,
            tau_certain=config.tau_certain,
            tau_dominant=config.tau_dominant,
            seed=config.seed,
        )


@dataclass
class BatchRefinement:
    """Distributions over the C classes for each of B rows (branches already averaged)."""

    classifier: np.ndarray  # p(y_given | x), the classifier branches
    # p(y | y_given, x): the denoiser told the row's own given label (None: not computed)
    conditional: np.ndarray | None
    marginal: np.ndarray  # p(y | x) = sum over y' of p(y | y', x) p(y' | x)
    candidates: np.ndarray  # the refined candidate weights (the dynamic prior after refinement)
    prior_kind: np.ndarray  # (M, B) certain / dominant / uncertain per branch
    # p(y_given | x) from a model that never saw the row's label: out-of-fold classifiers for a
    # training row, the vote of its reference neighbours for a new row (None: the product has
    # two experts).
    held_out: np.ndarray | None = None
    # The kNN vote of the row's neighbours among each branch's clean-marked reference rows,
    # averaged over branches (None: not searched here).
    neighbors: np.ndarray | None = None

    @classmethod
    def concatenate(cls, parts: Sequence[BatchRefinement]) -> BatchRefinement:
        def cat(name: str, axis: int = 0) -> np.ndarray | None:
            arrays = [getattr(p, name) for p in parts]
            if any(a is None for a in arrays):
                return None
            return np.concatenate(arrays, axis=axis)

        return cls(cat("classifier"), cat("conditional"), cat("marginal"), cat("candidates"),
                   cat("prior_kind", axis=1), cat("held_out"), cat("neighbors"))

    def take(self, rows: np.ndarray) -> BatchRefinement:
        """The refinement of ``rows`` of this batch (repeats allowed)."""
        def part(a: np.ndarray | None, axis: int = 0) -> np.ndarray | None:
            return None if a is None else np.take(a, rows, axis=axis)

        return BatchRefinement(
            self.classifier[rows], part(self.conditional), self.marginal[rows],
            self.candidates[rows], np.take(self.prior_kind, rows, axis=1),
            part(self.held_out), part(self.neighbors))

    def distribution(self, source: str) -> np.ndarray:
        if source == "given" and self.conditional is None:
            raise ValueError("p(y | given label, x) was not computed (refine_batch conditional=)")
        if source == "product":
            if self.held_out is None:
                return product_of_experts(self.marginal, self.classifier)
            return product_of_experts(self.marginal, self.classifier, self.held_out)
        return {
            "marginal": self.marginal,
            "given": self.conditional,
            "candidates": self.candidates,
            "classifier": self.classifier,
        }[source]


def product_of_experts(*dists: np.ndarray) -> np.ndarray:
    """Normalised geometric mean: a class keeps mass only where every distribution gives it some.

    The denoiser's p(y | x) and the classifier ensemble err differently (one follows the kNN
    prior over sentence embeddings, the other the LLM labels), so requiring both to move away
    from a given label is stronger evidence than either alone (docs/experiments.md). The
    ensemble has seen a training row's own label and leans towards it; a model that has not is
    the third expert (``BatchRefinement.held_out``): a held-out classifier on a training row,
    the neighbours' vote on a new row (``for_new_rows``).
    """
    log = sum(np.log(d + 1e-4) for d in dists) / len(dists)
    p = np.exp(log - log.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


class VoteTrades(NamedTuple):
    """kNN votes a row would get if one neighbour at the edge of its k nearest traded places
    with the next one out (prior.boundary_swaps), branches averaged as in the vote itself."""

    rows: np.ndarray  # (n,) the batch row of each trade
    votes: np.ndarray  # (n, C)


class NeighborPrior(NamedTuple):
    weights: np.ndarray  # (M, B, C) candidate weights per branch
    kind: np.ndarray  # (M, B) certain / dominant / uncertain per branch
    vote: np.ndarray  # (B, C) the kNN vote, averaged over branches
    trades: VoteTrades | None = None  # with boundary_band > 0


# How many neighbours beyond the k nearest a boundary check looks at.
BOUNDARY_EXTRA = 4


def prior_from_neighbors(
    embedding: np.ndarray, indexes: Sequence[NeighborIndex], settings: RefineSettings,
    boundary_band: float = 0.0,
) -> NeighborPrior:
    """Per branch, the kNN vote of that branch's clean-marked reference rows and the candidates
    it makes; with ``boundary_band`` > 0 also the votes one trade at the edge of the k nearest
    away (:class:`VoteTrades`)."""
    k = settings.knn_k
    extra = BOUNDARY_EXTRA if boundary_band > 0 else 0
    weights, kinds, votes, trade_rows, trade_votes = [], [], [], [], []
    for index in indexes:
        distances, labels = index.search(embedding, k + extra)
        p = knn_vote(distances[:, :k], labels[:, :k], settings.n_classes)
        w, kind = candidates(p, settings.tau_certain, settings.tau_dominant)
        weights.append(w)
        kinds.append(kind)
        votes.append(p)
        if extra:
            rows, traded_d, traded_l = boundary_swaps(distances, labels, k, boundary_band)
            if not len(rows):
                continue
            trade_rows.append(rows)
            # The other branches' votes stay: the average moves by this branch's change / M.
            trade_votes.append((knn_vote(traded_d, traded_l, settings.n_classes) - p[rows])
                               / len(indexes))
    vote = np.mean(votes, axis=0)
    trades = None
    if extra:
        rows = np.concatenate(trade_rows) if trade_rows else np.empty(0, np.int64)
        moved = (np.concatenate(trade_votes) if trade_votes
                 else np.empty((0, settings.n_classes)))
        trades = VoteTrades(rows, (vote[rows] + moved).astype(np.float32))
    return NeighborPrior(np.stack(weights), np.stack(kinds), vote.astype(np.float32), trades)


def leave_self_out_vote(embeddings: np.ndarray, labels: np.ndarray, clean: np.ndarray, k: int,
                        n_classes: int) -> np.ndarray:
    """(N, C) each reference row's kNN vote among each branch's clean-marked reference rows
    other than itself, averaged over branches: what ``prior_from_neighbors`` gives a new row,
    for a row whose own label must not vote (``clean``: (M, N) marks; ``labels``: given
    labels)."""
    rows = np.arange(len(embeddings))
    votes = []
    for marks in clean:
        members = np.flatnonzero(marks)
        if not len(members):
            votes.append(np.full((len(rows), n_classes), 1.0 / n_classes))
            continue
        # ``nearest`` returns found references only (at most len(members) of them).
        distances, ids = NeighborIndex(embeddings[members], labels[members]).nearest(
            embeddings, k + 1)
        itself = members[ids] == rows[:, None]
        # The row itself moves last (stable: the others keep their order), then k are kept.
        order = np.argsort(itself, axis=1, kind="stable")[:, :k]
        d = np.take_along_axis(np.where(itself, np.inf, distances), order, axis=1)
        neighbor_labels = np.take_along_axis(labels[members[ids]], order, axis=1)
        votes.append(knn_vote(d, np.where(np.isinf(d), -1, neighbor_labels), n_classes))
    return np.mean(votes, axis=0)


def given_label_vectors(given: np.ndarray, n_classes: int, scale: float) -> np.ndarray:
    """The denoiser's label input: the simplex of the given label, zeros where there is none."""
    return simplex(given, n_classes, scale)


def refine_batch(
    backend: ModelBackend,
    encoded: EncodedBatch,
    prior_weights: np.ndarray,
    prior_kind: np.ndarray,
    given: np.ndarray,
    keys: Sequence[int],
    settings: RefineSettings,
    update_prior: bool = True,
    conditional: bool = True,
    neighbor_vote: np.ndarray | None = None,
) -> BatchRefinement:
    """Refine B rows.

    ``given`` holds each row's given-label index (-1: the LLM refused). ``keys`` seed each row's
    random draws so that a row's result does not depend on the batch it is in. With
    ``update_prior`` the non-certain rows' candidate weights get n_s iterative-refinement updates
    from reverse processes conditioned on the given label (as in training); without it the
    weights are reported as they are (e.g. already refined during training). The chains
    conditioned on the row's own label serve only p(y | given, x) and that update: with neither
    (``conditional=False``, no ``update_prior``) they are skipped: n_s of the n_s + C chains.
    ``neighbor_vote`` (``NeighborPrior.vote``) is kept for ``for_new_rows``.
    """
    m, b, c = encoded.probs.shape
    n_s, steps = settings.refine_samples, settings.schedule.steps
    noise = row_noise(settings.seed, keys, (n_s + c, steps, m, c))  # (B, n_s + C, T, M, C)
    if not (conditional or update_prior):
        # Same draws for the remaining chains, so the marginal does not change.
        noise, n_s = noise[:, n_s:], 0
    conditioning = encoded.conditioning.transpose(1, 0, 2)  # (B, M, W): rows first

    # One reverse call per batch: n_s chains conditioned on the row's own given label (for
    # p(y | given, x) and the iterative refinement), then one chain per possible given label
    # (for the marginal p(y | x)).
    y_own = given_label_vectors(given, c, settings.scale)
    y_each = simplex(np.arange(c), c, settings.scale)
    y_chains = np.concatenate(
        [np.repeat(y_own[:, None], n_s, axis=1), np.broadcast_to(y_each, (b, c, c))], axis=1
    )  # (B, n_s + C, C)
    k = n_s + c
    logits = backend.reverse(
        noise.reshape(b * k, steps, m, c),
        np.repeat(conditioning, k, axis=0),
        y_chains.reshape(b * k, c),
    ).reshape(b, k, m, c).transpose(2, 0, 1, 3)  # (M, B, n_s + C, C)
    own_logits, each_logits = logits[:, :, :n_s], logits[:, :, n_s:]

    p_conditional = softmax(own_logits).mean(axis=(0, 2)) if n_s else None
    weights = np.array(prior_weights, dtype=np.float32, copy=True)
    if update_prior:
        for branch in range(m):
            open_rows = prior_kind[branch] != CERTAIN
            for s in range(n_s):
                predicted = own_logits[branch, :, s].argmax(-1)
                weights[branch, open_rows] = refine_weights(
                    weights[branch, open_rows], predicted[open_rows], n_s
                )

    # p(y | x): the chains of every possible given label, weighted by the classifier.
    marginal = (softmax(each_logits) * encoded.probs[..., None]).sum(axis=2).mean(axis=0)

    return BatchRefinement(
        classifier=encoded.probs.mean(axis=0),
        conditional=p_conditional,
        marginal=marginal,
        candidates=weights.mean(axis=0),
        prior_kind=prior_kind,
        neighbors=neighbor_vote,
    )


def reported_distribution(
    refinement: BatchRefinement,
    given: np.ndarray,
    source: str,
    temperature: float = 1.0,
    label_shares: np.ndarray | None = None,
) -> np.ndarray:
    """The distribution behind predicted_label, confidence and label_score: divided by the
    training labels' class shares when given (decision.py says why), then tempered."""
    dist = refinement.distribution(source)
    if source == "given":
        # A row without a given label has nothing to condition on: use p(y | x).
        dist = np.where((given < 0)[:, None], refinement.marginal, dist)
    if label_shares is not None:
        dist = divide_by_label_shares(dist, label_shares)
    return temper(dist, temperature) if temperature != 1.0 else dist


class FittedCalibration(NamedTuple):
    """What :func:`fit_output_calibration` fits (``model_io.OutputCalibration`` is the bundle's
    record of it, with the decision state)."""

    temperature: float
    label_bias: np.ndarray
    noise_ratio: float  # the overall noise ratio fitted to


def fit_output_calibration(
    refinement: BatchRefinement,
    given: np.ndarray,
    source: str,
    noise_ratio: float,
    class_noise: np.ndarray,
    label_shares: np.ndarray | None = None,
    average_held_out: bool = True,
) -> FittedCalibration:
    """Temperature and per-class bias fitted gold-free on the training rows' reported
    distribution, to the noise ratios of ``calibration_targets``: with ``average_held_out`` and
    held-out probabilities in ``refinement``, rho is averaged with the held-out estimate (train
    does so when rho was estimated; a noise ratio the user gave is taken as it is)."""
    held_out = refinement.held_out if average_held_out else None
    targets = calibration_targets(noise_ratio, class_noise, given, held_out)
    reported = reported_distribution(refinement, given, source, label_shares=label_shares)
    return FittedCalibration(*fit_calibration(reported, given, *targets), targets[0])


def new_row_agreement(refined: BatchRefinement, config: Any) -> np.ndarray | None:
    """The distribution a new row's change must agree with (``decide``'s ``agree_with``): the
    classifier ensemble's, which never saw the row (``new_row_agreement``; None: off). Not for
    a training row, whose label the ensemble was trained on."""
    return refined.classifier if getattr(config, "new_row_agreement", False) else None


def for_new_rows(refined: BatchRefinement, held_out_folds: int, vote_temperature: float = 1.0
                 ) -> BatchRefinement:
    """A bundle trained with held-out classifiers gives a training row a third expert that never
    saw its label. A new row's is the vote of its neighbours among the reference rows, which
    never saw it either: a kNN classifier over other embeddings than the ensemble's (on
    SemEval's new rows +0.8-1.1 points and fewer broken per fixed than the ensemble standing in
    for it, docs/experiments.md §25), tempered by ``vote_temperature``
    (``model_io.OutputCalibration.new_row_vote_temperature``)."""
    if not held_out_folds:
        return refined
    if refined.neighbors is None:
        raise ValueError("a new row's neighbour vote was not kept (refine_batch neighbor_vote=)")
    vote = refined.neighbors
    return replace(refined, held_out=vote if vote_temperature == 1.0
                   else temper(vote, vote_temperature))


def decided_distribution(
    refinement: BatchRefinement,
    given: np.ndarray,
    source: str,
    temperature: float,
    decision: DecisionRule,
    label_shares: np.ndarray | None = None,
) -> np.ndarray:
    """The calibrated distribution the decision rule reads (output_fields' labels)."""
    reported = reported_distribution(refinement, given, source, temperature, label_shares)
    return calibrate(reported, given, decision)


def output_fields(
    refinement: BatchRefinement,
    given: np.ndarray,
    labels: Sequence[str],
    source: str,
    temperature: float = 1.0,
    decision: DecisionRule | None = None,
    label_shares: np.ndarray | None = None,
    confidence_scaling: PlattScaling | None = None,
    label_score_scaling: PlattScaling | None = None,
    agree_with: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The fields each output row gains, in cleanlab's vocabulary.

    ``decision`` says when a given label is changed (decision.py); None is the plain argmax.
    ``agree_with``: a distribution whose argmax a change must also be (``decide``).
    The scalings, fitted on trusted labels (trusted.py), rescale confidence and label_score.
    """
    decision = decision or DecisionRule(rule="argmax")
    dist = decided_distribution(refinement, given, source, temperature, decision, label_shares)
    predicted = decide(dist, given, decision, agree_with)
    row = np.arange(len(given))
    label_score = dist[row, np.maximum(given, 0)]
    confidence = dist[row, predicted]
    if label_score_scaling is not None:
        label_score = label_score_scaling(label_score)
    if confidence_scaling is not None:
        confidence = confidence_scaling(confidence)
    rows = []
    for i in range(len(given)):
        g = int(given[i])
        has_given = g >= 0
        cand = refinement.candidates[i]
        rows.append(
            {
                "given_label": labels[g] if has_given else None,
                "predicted_label": labels[int(predicted[i])],
                "label_score": round(float(label_score[i]), 6) if has_given else None,
                "is_label_issue": bool(has_given and predicted[i] != g),
                "confidence": round(float(confidence[i]), 6),
                "candidates": {
                    labels[j]: round(float(cand[j]), 6)
                    for j in np.argsort(-cand, kind="stable")
                    if cand[j] > 0
                },
            }
        )
    return rows


def kind_counts(prior_kind: np.ndarray) -> dict[str, int]:
    """Rows per prior kind, by majority over branches (ties go to the more certain kind)."""
    counts = np.stack([(prior_kind == k).sum(axis=0) for k in range(len(KIND_NAMES))], axis=1)
    majority = counts.argmax(axis=1)
    return {name: int((majority == k).sum()) for k, name in enumerate(KIND_NAMES)}
