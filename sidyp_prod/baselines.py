"""Baselines SiDyP is measured against: a classifier fine-tuned on the LLM labels, nothing else."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .config import SiDyPConfig
from .device import Precision
from .pretrained import PretrainedEncoder
from .training import _branch_outputs, _Run, _stage_one, encoded_trunk, out_of_fold_probs


def plain_fine_tune_config(config: SiDyPConfig) -> SiDyPConfig:
    """The usual alternative to SiDyP: one classifier, every encoder layer fine-tuned at one
    learning rate (5e-5) for 4 epochs on the LLM labels; no co-regularisation, no dynamics.
    Batches of 16: on SemEval's valid rows 48.3% against 42.1% with batches of 32 (one seed)."""
    return replace(config, trainable_layers="all", branches=1, snapshots=1, coreg_alpha=0.0,
                   classifier_epochs=4, classifier_lr=5e-5, head_lr=5e-5,
                   classifier_batch_size=16)


def fine_tuned_classifier_probs(
    texts: list[str],
    given: np.ndarray,
    n_classes: int,
    pretrained: PretrainedEncoder,
    config: SiDyPConfig,
    device: torch.device | None = None,
) -> np.ndarray:
    """(N, C) p(y | x) of every row from one classifier (SiDyP's branch architecture with
    ``config``'s tuned layers) fine-tuned on the rows whose ``given`` label is >= 0; rows with
    -1 are only predicted."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = device or torch.device("cpu")
    run = _Run(device, Precision(device), pretrained.pooling.mode)
    single = replace(config, branches=1, snapshots=1, coreg_alpha=0.0)
    with encoded_trunk(texts, pretrained, single, device) as (top, cache, _):
        stage = _stage_one(cache, top, given, n_classes, single, rng, run)
        _, probs = _branch_outputs(stage.branches, cache, single.encode_batch_size, run)
    return probs[0]


def cross_fitted_classifier_probs(
    texts: list[str],
    given: np.ndarray,
    n_classes: int,
    pretrained: PretrainedEncoder,
    config: SiDyPConfig,
    folds: int = 5,
    device: torch.device | None = None,
) -> np.ndarray:
    """Out-of-fold p(y | x), (N, C), of one classifier (SiDyP's branch architecture: the frozen
    trunk, the top layer(s) and a head) fine-tuned on the LLM labels of the other folds."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = device or torch.device("cpu")
    run = _Run(device, Precision(device), pretrained.pooling.mode)
    with encoded_trunk(texts, pretrained, config, device) as (top, cache, _):
        return out_of_fold_probs(cache, top, given, n_classes, config, rng, folds, run)
