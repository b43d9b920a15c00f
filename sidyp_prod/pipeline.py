"""Refining one chunk of parsed rows with a loaded bundle and a back end: tokenize, encode (each
row padded to a width of its own), the neighbour prior, the reverse process, the decision. What
every way of running refine calls: ``api.refine`` chunk by chunk, the Ray engine's actors and
the Triton BLS model. Torch-free."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from .backends.base import EncodedBatch, ModelBackend
from .corpus import Row
from .decision import DecisionRule, decide, decision_margin
from .diffusion import text_key
from .encoder import pad_batch, pad_token_id, tokenize, unpadded_ids, width_batches
from .model_io import LoadedModel
from .neighbors import one_search_thread, search_in_one_thread
from .refinement import (
    BatchRefinement,
    RefineSettings,
    VoteTrades,
    decided_distribution,
    for_new_rows,
    new_row_agreement,
    output_fields,
    prior_from_neighbors,
    refine_batch,
)

# A row of the int8 encoder whose decision is this close (in log-probability, decision_margin)
# is refined again with the fp32 encoder: 2% of SemEval's rows, and the labels that differ from
# fp32 fell from 11 to 1-3 of 1,927 (docs/experiments.md §24).
CLOSE_CALL = 0.05
# So is a row whose label would change if a neighbour at the edge of its k nearest traded
# places with the next one out, where their distances are within this fraction of the k-th's:
# int8 moves the difference of two neighbours' distances by about 0.1% (median; p95 0.6%) and
# such trades were most of the labels that still differed (docs/experiments.md §29).
BOUNDARY_BAND = 0.002


def given_indices(rows: Sequence[Row], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[r.label] if r.label is not None else -1 for r in rows], dtype=np.int64)


def refine_rows(
    rows: Sequence[Row],
    model: LoadedModel,
    backend: ModelBackend,
    token_ids: Sequence[np.ndarray] | None = None,
) -> list[dict]:
    """Refine a chunk of parsed rows with a loaded bundle: each input record plus its new fields.

    ``token_ids`` are the rows' unpadded ids (``encoder.unpadded_ids``) when an earlier stage
    already tokenized them (the Ray engine tokenizes on CPU workers, away from the model
    actors); either way each row is padded to a width of its own (``encoder.width_batches``), so
    its output does not depend on the other rows in ``rows``.
    A back end with ``parallel_batches`` > 1 (a remote server, or ONNX Runtime on a multi-core
    CPU) gets that many encoder batches in flight at once; results do not depend on it, since
    each row's noise is seeded by its text.
    With an int8 encoder, the rows whose decision is a close call are refined again with
    ``backend.reference``, the fp32 one (CLOSE_CALL).
    """
    config = model.config
    settings = RefineSettings.from_config(config, model.n_classes)
    decision = model.calibration.decision_rule(config)
    vote_temperature = model.calibration.new_row_vote_temperature(config)
    given = given_indices(rows, model.labels)
    texts = [r.text for r in rows]
    if token_ids is None:
        token_ids = unpadded_ids(*tokenize(model.tokenizer, texts))
    pad_id = pad_token_id(model.tokenizer)
    lengths = [len(ids) for ids in token_ids]
    # A separate embedding model has its own tokens: its batches are its own.
    embeddings = (sentence_embeddings(model, backend, texts)
                  if model.embedding_tokenizer is not None else None)

    def refined(batch: np.ndarray, runtime: ModelBackend, boundary_band: float = 0.0
                ) -> tuple[BatchRefinement, VoteTrades | None]:
        """The batch's refinement and, with ``boundary_band``, its rows' vote trades."""
        ids, mask = pad_batch(token_ids, batch, pad_id)
        encoded = _encode(runtime, ids, mask)
        if embeddings is not None:
            encoded = replace(encoded, embedding=embeddings[batch])
        prior = prior_from_neighbors(encoded.embedding, model.indexes, settings, boundary_band)
        # New rows get the iterative refinement of their candidates only where training did.
        refinement = refine_batch(
            runtime, encoded, prior.weights, prior.kind, given[batch],
            [text_key(texts[i]) for i in batch], settings, update_prior=config.dynamic_prior,
            conditional=config.label_source == "given", neighbor_vote=prior.vote,
        )
        return refinement, prior.trades

    def fields(refinement: BatchRefinement, batch: np.ndarray) -> list[dict]:
        return output_fields(
            for_new_rows(refinement, config.held_out_folds, vote_temperature), given[batch],
            model.labels, config.label_source, model.temperature, decision, model.label_shares,
            model.calibration.confidence_scaling, model.calibration.label_score_scaling,
            new_row_agreement(refinement, config),
        )

    def refine_one(batch: np.ndarray) -> tuple[list[dict], np.ndarray]:
        """The batch's fields, and its rows whose decision is a close call."""
        if backend.reference is None:
            return fields(refined(batch, backend)[0], batch), batch[:0]
        refinement, trades = refined(batch, backend, BOUNDARY_BAND)
        label, margin = new_row_decisions(model, refinement, given[batch], decision)
        close = (margin < CLOSE_CALL) | relabelled_by_trades(
            model, refinement, trades, given[batch], label, decision)
        return fields(refinement, batch), batch[close]

    # Outputs keep input order; the batches only decide what is encoded together.
    size, parallel = config.encode_batch_size, backend.parallel_batches
    batches = _spread(width_batches(lengths, size), parallel)
    results = _map_batches(backend, refine_one, batches)
    extras: list[dict | None] = [None] * len(rows)
    for batch, (batch_fields, _) in zip(batches, results, strict=True):
        for i, extra in zip(batch, batch_fields, strict=True):
            extras[i] = extra
    close = np.concatenate([c for _, c in results]) if results else np.empty(0, np.int64)
    if len(close):
        # The close calls again with the fp32 encoder, batched together: a row's fp32 result
        # does not depend on its batch either, so they get exactly the fp32 reference's fields.
        again = [close[b] for b in width_batches([lengths[i] for i in close], size)]
        again = _spread(again, parallel)
        exact = _map_batches(backend, lambda b: fields(refined(b, backend.reference)[0], b), again)
        for batch, batch_fields in zip(again, exact, strict=True):
            for i, extra in zip(batch, batch_fields, strict=True):
                extras[i] = extra
    return [{**row.record, **(extra or {})} for row, extra in zip(rows, extras, strict=True)]


def new_row_decisions(model: LoadedModel, refinement: BatchRefinement, given: np.ndarray,
                      decision: DecisionRule) -> tuple[np.ndarray, np.ndarray]:
    """New rows' labels under ``decision`` and how far each is from going another way
    (``decision.decision_margin``)."""
    config = model.config
    vote_temperature = model.calibration.new_row_vote_temperature(config)
    dist = decided_distribution(
        for_new_rows(refinement, config.held_out_folds, vote_temperature), given,
        config.label_source, model.temperature, decision, model.label_shares)
    agree_with = new_row_agreement(refinement, config)
    return (decide(dist, given, decision, agree_with),
            decision_margin(dist, given, decision, agree_with))


def relabelled_by_trades(model: LoadedModel, refinement: BatchRefinement,
                         trades: VoteTrades | None, given: np.ndarray, labels: np.ndarray,
                         decision: DecisionRule) -> np.ndarray:
    """(B,) whether one of a row's vote trades (``prior_from_neighbors(boundary_band=)``)
    would change its ``labels``."""
    relabelled = np.zeros(len(given), dtype=bool)
    if trades is None or not len(trades.rows):
        return relabelled
    traded = replace(refinement.take(trades.rows), neighbors=trades.votes)
    traded_labels, _ = new_row_decisions(model, traded, given[trades.rows], decision)
    relabelled[trades.rows[traded_labels != labels[trades.rows]]] = True
    return relabelled


def refine_chunk(
    rows: Sequence[Row], model: LoadedModel, backend: ModelBackend,
    known: Mapping[int, dict] | None,
) -> list[dict]:
    """``refine_rows`` for the rows whose fields are not ``known`` already; input order kept."""
    if not known:
        return refine_rows(rows, model, backend)
    fresh = [r for r in rows if r.line_no not in known]
    refined = iter(refine_rows(fresh, model, backend) if fresh else [])
    return [{**r.record, **known[r.line_no]} if r.line_no in known else next(refined)
            for r in rows]


def _paired(call: Callable[[np.ndarray, np.ndarray], Any], ids: np.ndarray,
            mask: np.ndarray) -> Any:
    """``call(ids, mask)``, with a lone row run beside a copy of itself: ONNX Runtime's CPU
    kernels round a one-row batch differently from the same row in a larger one on some CPUs.
    The caller keeps the first row of a lone row's result."""
    if len(ids) > 1:
        return call(ids, mask)
    return call(np.repeat(ids, 2, axis=0), np.repeat(mask, 2, axis=0))


def _encode(backend: ModelBackend, ids: np.ndarray, mask: np.ndarray) -> EncodedBatch:
    """``backend.encode`` of a batch, a lone row as :func:`_paired` runs it."""
    encoded = _paired(backend.encode, ids, mask)
    return encoded if len(ids) > 1 else encoded.rows(1)


def _spread(batches: list[np.ndarray], parallel: int) -> list[np.ndarray]:
    """At least ``parallel`` batches where there are rows enough: a small chunk's batches are
    split so that every worker has one (rows do not affect each other, so outputs stay)."""
    if parallel <= 1 or len(batches) >= parallel:
        return batches
    pieces = -(-parallel // max(len(batches), 1))
    return [part for batch in batches
            for part in np.array_split(batch, min(pieces, len(batch)))]


def _map_batches(backend: ModelBackend, function: Callable[[np.ndarray], Any],
                 batches: list[np.ndarray]) -> list[Any]:
    """``function`` over ``batches`` in order, ``backend.parallel_batches`` of them in flight,
    each worker's neighbour search on one thread (results do not depend on either)."""
    parallel = backend.parallel_batches
    if parallel > 1 and len(batches) > 1:
        with ThreadPoolExecutor(min(parallel, len(batches)),
                                initializer=search_in_one_thread) as pool:
            return list(pool.map(function, batches))
    if parallel > 1:  # a lone small batch: its search alone on one core, as in the workers
        with one_search_thread():
            return [function(batch) for batch in batches]
    return [function(batch) for batch in batches]


def sentence_embeddings(model: LoadedModel, backend: ModelBackend, texts: Sequence[str]
                        ) -> np.ndarray:
    """(N, H) the neighbour search's sentence embeddings of ``texts``: the separate embedding
    model's (``backend.embed``) or the encoder graph's. Each row is padded to a width of its
    own, so a row's embedding does not depend on the others in ``texts``."""
    tokenizer = model.embedding_tokenizer or model.tokenizer
    token_ids = unpadded_ids(*tokenize(tokenizer, list(texts)))
    lengths = [len(ids) for ids in token_ids]
    pad_id = pad_token_id(tokenizer)

    def embed_one(batch: np.ndarray) -> np.ndarray:
        ids, mask = pad_batch(token_ids, batch, pad_id)
        if model.embedding_tokenizer is None:
            return _encode(backend, ids, mask).embedding
        return _paired(backend.embed, ids, mask)[: len(batch)]

    batches = _spread(width_batches(lengths, model.config.encode_batch_size),
                      backend.parallel_batches)
    parts: dict[int, np.ndarray] = {}
    for batch, embedding in zip(batches, _map_batches(backend, embed_one, batches), strict=True):
        parts.update(zip(batch.tolist(), embedding, strict=True))
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([parts[i] for i in range(len(texts))]).astype(np.float32)
