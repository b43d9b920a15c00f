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
from .config import SiDyPConfig
from .decision import DecisionRule, class_noise_ratios, label_shares
from .diffusion import text_key
from .model_io import OutputCalibration
from .noise import noise_ratio_interval
from .refinement import (
    BatchRefinement,
    RefineSettings,
    fit_output_calibration,
    output_fields,
    refine_batch,
)
from .training import TrainingResult

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


def fit_training_rows(
    result: TrainingResult,
    texts: list[str],
    given: np.ndarray,
    labels: list[Any],
    config: SiDyPConfig,
    blocked: list[int],
    device: torch.device,
) -> TrainingRowsFit:
    """Refine the training rows from their Stage I features, fit the output calibration to the
    estimated noise (the mean label_score is the clean fraction, each class's mean its clean-
    marked fraction; a noise ratio the user gave is taken as it is), and decide their labels.
    ``blocked``: classes that are never a change target."""
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
    temperature, label_bias, calibration_noise = fit_output_calibration(
        refinement, given, config.label_source, result.noise_ratio, class_noise, shares,
        average_held_out=result.noise_ratio_estimated,
    )
    interval = None
    if result.noise_ratio_estimated:
        labelled = given >= 0
        p_given = (None if refinement.held_out is None else
                   refinement.held_out[np.arange(len(given)), np.maximum(given, 0)])
        interval = noise_ratio_interval(result.noise_scores, labelled, p_given, seed=config.seed)
    calibration = OutputCalibration(temperature, label_bias, shares, blocked)
    decision = DecisionRule.from_config(config, label_bias, blocked=blocked)
    predictions = output_fields(
        refinement, given, labels, config.label_source, temperature, decision, shares
    )
    return TrainingRowsFit(refinement, calibration, class_noise, calibration_noise, interval,
                           predictions)
