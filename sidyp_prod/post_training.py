"""The post-training stage: the training rows' own refined labels and the gold-free output
calibration fitted on them.

A training row's encoder outputs are known from Stage I, so only the denoiser runs; each row's
third expert is a classifier that never saw its label (``held_out_folds``). The calibration
(temperature, per-class bias) and the decision state (label shares, blocked classes) fitted
here are what the bundle records in ``calibration.json`` for refine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .backends.base import EncodedBatch
from .backends.torch_backend import TorchBackend
from .calibration import likelihood_temperature
from .config import SiDyPConfig
from .decision import calibrate, class_noise_ratios, label_shares
from .diffusion import text_key
from .model_io import OutputCalibration
from .noise import noise_ratio_interval
from .refinement import (
    BatchRefinement,
    RefineSettings,
    fit_output_calibration,
    leave_self_out_vote,
    output_fields,
    refine_batch,
    reported_distribution,
)
from .training import TrainingResult
from .trusted import (
    TrustedCheck,
    both_labelled,
    check_changes,
    disjoint,
    scalings_on_trusted,
    trusted_noise_ratio,
)

BATCH_ROWS = 256


@dataclass
class TrainingRowsFit:
    refinement: BatchRefinement  # every distribution of every training row
    calibration: OutputCalibration
    class_noise_ratios: np.ndarray  # (C,) the clean marks' noise ratio per given class
    calibration_noise_ratio: float | None  # the rho the calibration fitted to
    # A 90% interval for the noise ratio (noise.noise_ratio_interval); None when it was given.
    noise_ratio_interval: tuple[float, float] | None
    predictions: list[dict[str, Any]]  # the training rows' output fields, in row order
    trusted: TrustedCheck | None = None  # the change rule's check on trusted labels, if any


def fit_training_rows(
    result: TrainingResult,
    texts: list[str],
    given: np.ndarray,
    labels: list[Any],
    config: SiDyPConfig,
    blocked: list[int],
    device: torch.device,
    trusted: np.ndarray | None = None,
) -> TrainingRowsFit:
    """Refine the training rows from their Stage I features, fit the output calibration to the
    estimated noise (the mean label_score is the clean fraction, each class's mean its clean-
    marked fraction; a noise ratio the user gave is taken as it is), and decide their labels.
    ``blocked``: classes that are never a change target. ``trusted``: a person's class index
    per row (-1: none), never trained on; when given, the change rule is the one that fixes
    more of those labels than it breaks, or none, the calibration fits their noise ratio
    where the estimate's interval misses theirs, and confidence and label_score are rescaled
    to them where that fits them significantly better (trusted.py)."""
    n_classes = len(labels)
    settings = RefineSettings.from_config(config, n_classes)
    denoiser = TorchBackend(None, result.denoiser, settings.schedule, settings.scale, str(device))
    features = result.features
    conditioning = denoiser.condition(features.dynamics)
    keys = [text_key(t) for t in texts]
    parts = []
    for start in range(0, len(texts), BATCH_ROWS):
        batch = np.arange(start, min(start + BATCH_ROWS, len(texts)))
        encoded = EncodedBatch(
            features.probs[:, batch], conditioning[:, batch], features.embedding[batch]
        )
        parts.append(refine_batch(
            denoiser, encoded, result.prior_weights[:, batch], result.prior_kind[:, batch],
            given[batch], [keys[i] for i in batch], settings, update_prior=False,
        ))
    refinement = BatchRefinement.concatenate(parts)
    if features.held_out_probs is not None:
        refinement = replace(refinement, held_out=features.held_out_probs)
    class_noise = class_noise_ratios(result.clean, given, n_classes)
    shares = label_shares(given, n_classes) if config.label_share_correction else None
    interval = None
    if result.noise_ratio_estimated:
        labelled = given >= 0
        p_given = (None if refinement.held_out is None else
                   refinement.held_out[np.arange(len(given)), np.maximum(given, 0)])
        interval = noise_ratio_interval(result.noise_scores, labelled, p_given, seed=config.seed)
    has_trusted = trusted is not None and len(both_labelled(given, trusted)) > 0
    noise_target, class_targets = result.noise_ratio, class_noise
    average_held_out = result.noise_ratio_estimated
    trusted_noise = trusted_noise_ratio(given, trusted) if has_trusted else None
    to_trusted = (trusted_noise is not None and interval is not None
                  and disjoint(trusted_noise[1], interval))
    if to_trusted:
        # The gold-free estimate misses what the person's labels show (a hard task read as
        # noise, or the reverse): calibrate to the trusted rows' ratio instead.
        noise_target, average_held_out = trusted_noise[0], False
        class_targets = np.clip(class_noise * noise_target / max(result.noise_ratio, 1e-6), 0, 1)
    temperature, label_bias, calibration_noise = fit_output_calibration(
        refinement, given, config.label_source, noise_target, class_targets, shares,
        average_held_out=average_held_out,
    )
    vote_temperature = None
    if refinement.held_out is not None:
        # A new row's third expert is its neighbours' vote: tempered to the labels on the
        # training rows' own votes, each row left out of its own.
        vote = leave_self_out_vote(result.embeddings, result.given, result.clean, config.knn_k,
                                   n_classes)
        vote_temperature = likelihood_temperature(vote, result.given)
    calibration = OutputCalibration(temperature, label_bias, shares, blocked,
                                    vote_temperature=vote_temperature)
    decision = calibration.decision_rule(config)
    check = None
    if has_trusted:
        reported = reported_distribution(refinement, given, config.label_source, temperature,
                                         shares)
        dist = calibrate(reported, given, decision)
        check = check_changes(dist, given, trusted, decision)
        decision = check.decision
        confidence_scaling, label_score_scaling = scalings_on_trusted(
            dist, given, trusted, decision)
        check = replace(check, calibrated_to_trusted=to_trusted,
                        confidence_scaling=confidence_scaling,
                        label_score_scaling=label_score_scaling)
        calibration = replace(calibration, change_rule=decision.rule, change_odds=decision.odds,
                              confidence_scaling=confidence_scaling,
                              label_score_scaling=label_score_scaling)
    predictions = output_fields(
        refinement, given, labels, config.label_source, temperature, decision, shares,
        calibration.confidence_scaling, calibration.label_score_scaling,
    )
    return TrainingRowsFit(refinement, calibration, class_noise, calibration_noise, interval,
                           predictions, check)

